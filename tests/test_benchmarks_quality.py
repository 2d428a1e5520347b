"""The quality benchmark: its series load from the installed packages as users would have them,
its own baselines score the right points, its verdicts and targets are read from the report,
and (slow) one short run of the whole harness."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets import DATASETS, Dataset, data_rows
from benchmarks.quality import (
    TrainingRun,
    baselines_for,
    build_parser,
    console_table,
    interval_rows,
    main,
    series_result,
)
from training.table import load_csv

MIN_ROWS = 1000


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Every benchmark series written once as its CSV."""
    directory = tmp_path_factory.mktemp("quality-series")
    return {name: dataset.write_csv(directory) for name, dataset in DATASETS.items()}


# --------------------------------------------------------------------------------------------
# The series
# --------------------------------------------------------------------------------------------


def test_datasets_include_five_real_series_and_the_synthetic_one():
    real = [d for d in DATASETS.values() if d.name != "synthetic"]
    assert len(real) >= 5
    assert "synthetic" in DATASETS
    assert {"PT30M", "PT1H", "P1D", "P7D", "P1M"} <= {d.step for d in DATASETS.values()}


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_csv_loads_with_its_time_column_and_step(written, name):
    dataset = DATASETS[name]
    path = written[name]
    assert data_rows(path) >= MIN_ROWS
    series = load_csv(path, dataset.target)
    assert series.time is not None
    assert series.time.column == dataset.time_column
    assert series.time.step == dataset.step
    assert len(series.values) >= MIN_ROWS
    assert series.target == dataset.target
    assert not np.isnan(series.values[:, series.target_index]).all()


def test_dataset_copied_files_keep_the_source_columns(written):
    with written["seattle_weather"].open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["date", "precipitation", "temp_max", "temp_min", "wind", "weather"]
    series = load_csv(written["seattle_weather"], "temp_max")
    assert ("weather", "non-numeric column") in series.dropped


def test_dataset_gaps_are_left_for_the_trainer(written):
    """co2's empty weeks stay empty cells, and sf_temps' missing DST hour stays missing."""
    co2 = load_csv(written["co2"], "co2")
    assert int(np.isnan(co2.values[:, 0]).sum()) == 59
    sf = load_csv(written["sf_temps"], "temp")
    assert sf.time is not None and sf.time.inserted == 1


# --------------------------------------------------------------------------------------------
# The harness's own baselines, and reading a report
# --------------------------------------------------------------------------------------------

PERIOD = 12


def _trend_with_season(path: Path) -> None:
    """y = t + a fixed cycle of 12: persistence plus the seasonal change forecasts it exactly."""
    t = np.arange(1200)
    y = 0.5 * t + np.tile([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], 100)
    with path.open("w") as handle:
        handle.write("step,y\n" + "".join(f"{i},{v}\n" for i, v in zip(t, y, strict=True)))


TOY = Dataset(
    name="toy",
    title="toy",
    source="test",
    frequency="steps",
    step="1",
    time_column="step",
    target="y",
    periods=(PERIOD,),
    character="trend and a cycle of 12",
    writer=_trend_with_season,
)


@pytest.fixture
def toy(tmp_path) -> tuple[Path, dict]:
    """The toy CSV, and a report of the trainer's points on it: the default split of 1,200
    rows is 840 / 180 / 180, and 48-row windows leave 132 validation and test points."""
    path = TOY.write_csv(tmp_path)
    y = load_csv(path, "y").values[:, 0]
    points = {"val": np.arange(840 + 48, 1020), "test": np.arange(1020 + 48, 1200)}
    report = {
        "horizon": 1,
        "metrics": {
            name: {
                "n_windows": len(idx),
                "persistence_mae": float(np.mean(np.abs(y[idx] - y[idx - 1]))),
            }
            for name, idx in points.items()
        },
    }
    return path, report


def test_baselines_without_report_section_are_the_simple_ones_on_the_trainers_points(toy):
    path, report = toy
    result = baselines_for(path, TOY, report)
    scores = {s.name: s for s in result.scores}
    assert result.source == "benchmark"
    assert result.notes == []  # the persistence MAE matched the report's on both splits
    assert scores["persistence"].test_mae == pytest.approx(
        report["metrics"]["test"]["persistence_mae"]
    )
    assert scores["persistence_seasonal_change"].test_mae == pytest.approx(0.0, abs=1e-9)
    assert scores["seasonal_naive"].test_mae == pytest.approx(0.5 * PERIOD)
    assert set(result.skipped) == {"AutoETS", "AutoTheta", "MSTL", "AutoARIMA"}


def test_baselines_notes_points_that_differ_from_the_trainers(toy):
    path, report = toy
    report["metrics"]["test"]["n_windows"] -= 1
    result = baselines_for(path, TOY, report)
    assert any(n.startswith("test points differ") for n in result.notes)


def test_baselines_from_the_report_are_cross_checked(toy):
    path, report = toy
    mine = {s.name: s for s in baselines_for(path, TOY, report).scores}
    section = [
        _score(name, mine[name].val_mae, mine[name].test_mae, mine[name].period)
        for name in ("persistence", "seasonal_naive", "persistence_seasonal_change")
    ]
    report["baselines"] = {"periods": [PERIOD], "scores": [*section, _score("AutoETS", 1, 2)]}
    result = baselines_for(path, TOY, report)
    assert result.source == "report"
    assert result.notes[-1].startswith("cross-check: ")
    report["baselines"]["scores"][0]["test_mae"] *= 1.01
    assert baselines_for(path, TOY, report).notes[-1].startswith("cross-check FAILED")


def _run_with_report(tmp_path: Path, report: dict, *, seconds: float = 50.0) -> TrainingRun:
    version = tmp_path / "artifacts" / "v1"
    version.mkdir(parents=True)
    (version / "report.json").write_text(json.dumps(report))
    log = tmp_path / "train.log"
    log.write_text("published\n")
    return TrainingRun(["python"], 0, seconds, 0.0, log, version / "report.json", report, True)


def _report(val_mae: float, test_mae: float, baselines: list[dict]) -> dict:
    return {
        "window": 48,
        "horizon": 1,
        "guard": {"collapsed": False, "reasons": []},
        "metrics": {
            "val": {"mae": val_mae, "persistence_mae": 1.0, "n_windows": 100},
            "test": {"mae": test_mae, "persistence_mae": 1.0, "n_windows": 100},
        },
        "baselines": {"periods": [24], "scores": baselines, "skipped": {}},
    }


def _score(name: str, val: float, test: float, period: int | None = None) -> dict:
    statistical = name in {"AutoETS", "AutoTheta", "MSTL"}
    return {
        "name": name,
        "period": period,
        "statistical": statistical,
        "val_mae": val,
        "test_mae": test,
        "seconds": 0.1,
    }


def test_series_result_reads_report_baselines_and_shows_missed_targets(tmp_path):
    report = _report(
        0.8,
        0.95,
        [
            _score("persistence", 1.0, 1.0),
            _score("seasonal_naive", 0.7, 1.2, 24),
            _score("AutoETS", 0.9, 0.5, 24),
            _score("AutoTheta", 0.9, 0.6, 24),
        ],
    )
    run = _run_with_report(tmp_path, report, seconds=130.0)
    record = series_result(DATASETS["synthetic"], 6000, run, None)
    assert record["baselines"]["source"] == "report"
    assert record["ratios"]["persistence"] == pytest.approx(0.95)
    assert record["ratios"]["AutoETS"] == pytest.approx(1.9)
    assert record["ratios"]["MSTL"] is None
    assert record["best"]["name"] == "AutoETS"
    assert record["targets"]["vs_persistence"]["met"] is False
    assert record["targets"]["vs_best_statistical"]["met"] is False
    assert record["targets"]["training_seconds"]["met"] is False
    # On validation the LSTM (0.8) loses to seasonal naive (0.7): a default run refuses it.
    assert record["default_run"]["refused"] is True
    assert record["default_run"]["reasons"][0].startswith("seasonal naive at 24 beat the model")


def test_series_result_takes_the_trainers_verdict_when_the_report_has_it(tmp_path):
    report = _report(0.5, 0.5, [_score("persistence", 1.0, 1.0)])
    report["baselines"]["guard_reasons"] = ["persistence beat the model"]
    report["baselines"]["guard_causes"] = ["trend pushed inputs out of range"]
    record = series_result(DATASETS["synthetic"], 6000, _run_with_report(tmp_path, report), None)
    verdict = record["default_run"]
    assert verdict["refused"] is True
    assert verdict["source"] == "the trainer's guard"
    assert verdict["reasons"] == ["persistence beat the model"]
    assert verdict["causes"] == ["trend pushed inputs out of range"]


def test_series_result_without_statistical_baselines_is_not_measured(tmp_path):
    report = _report(0.5, 0.5, [_score("persistence", 1.0, 1.0)])
    record = series_result(DATASETS["synthetic"], 6000, _run_with_report(tmp_path, report), None)
    assert record["default_run"]["refused"] is False
    assert record["targets"]["vs_persistence"]["met"] is True
    assert record["targets"]["vs_best_statistical"]["met"] is None


def _interval_scores(c80: float, w80: float, c95: float, w95: float) -> list[dict]:
    return [
        {"level": 80.0, "coverage": c80, "mean_width": w80},
        {"level": 95.0, "coverage": c95, "mean_width": w95},
    ]


def test_series_result_reads_the_intervals_and_autoets_intervals(tmp_path):
    ets = _score("AutoETS", 0.9, 0.8, 24)
    ets["test_intervals"] = _interval_scores(0.70, 4.0, 0.90, 6.0)
    ets["note"] = "ETS ANA"
    report = _report(0.5, 0.5, [_score("persistence", 1.0, 1.0), ets])
    report["intervals"] = {
        "method": "absolute",
        "scores": [[0.1] * 100],
        "test": _interval_scores(0.84, 2.0, 0.95, 3.0),
        "methods": {
            "normalized": _interval_scores(0.81, 2.2, 0.96, 3.3),
            "absolute": _interval_scores(0.84, 2.0, 0.95, 3.0),
        },
    }

    record = series_result(DATASETS["synthetic"], 6000, _run_with_report(tmp_path, report), None)

    intervals = record["intervals"]
    assert intervals["methods"] == ["absolute", "normalized"]  # the served one first
    assert intervals["calibration_windows"] == 100
    at80, at95 = intervals["levels"]
    assert at80["methods"]["normalized"] == {"coverage": 0.81, "mean_width": 2.2}
    assert at80["AutoETS"] == {"coverage": 0.70, "mean_width": 4.0}
    assert at80["width_vs_AutoETS"] == pytest.approx(0.5)
    assert at80["coverage_target"]["met"] is False  # 84 % is 4 points off 80 %
    assert at95["coverage_target"]["met"] is True
    results = {"series": [record]}
    header, (row,) = interval_rows(results)
    assert header[3] == "80% absolute (served)" and header[5] == "80% AutoETS"
    assert row[3] == "84.0% / 2" and row[5] == "70.0% / 4" and row[6] == "0.50"
    assert row[-1] == "80% MISSED, 95% met"


def test_series_result_without_intervals_leaves_them_out(tmp_path):
    report = _report(0.5, 0.5, [_score("persistence", 1.0, 1.0)])
    record = series_result(DATASETS["synthetic"], 6000, _run_with_report(tmp_path, report), None)
    assert record["intervals"] is None
    assert "Prediction intervals" not in console_table(
        {"series": [record | {"frequency": "hourly"}]}
    )


def test_series_result_of_a_run_without_report_measures_nothing(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("Traceback\nModuleNotFoundError: no module\n")
    run = TrainingRun(["python"], 1, 3.0, 0.0, log, None, None, False)
    record = series_result(DATASETS["co2"], 2284, run, None)
    assert record["default_run"]["refused"] is None
    assert all(t["met"] is None for t in record["targets"].values())


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_quality_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--series", "--output-dir", "--keep-artifacts", "--timeout", "--train-args"):
        assert flag in text
    for name in DATASETS:
        assert name in text


def test_quality_refuses_unknown_series_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--series", "taylor,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "nope" in err


@pytest.mark.slow
def test_quality_smoke_run_on_one_short_series(tmp_path, capsys):
    """The whole harness on the shortest series with a tiny training configuration."""
    code = main(
        [
            "--series",
            "seattle_weather",
            "--output-dir",
            str(tmp_path),
            "--timeout",
            "300",
            "--train-args=--epochs 1 --units 8 --window 24",
        ]
    )
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "quality.json").read_text())
    (record,) = results["series"]
    assert code == 0, record["training"]["last_lines"]
    assert record["training"]["exit_code"] == 0
    assert record["ratios"]["persistence"] is not None
    assert record["best"]["name"] is not None
    assert results["extra_training_args"] == ["--epochs", "1", "--units", "8", "--window", "24"]
    markdown = (tmp_path / "quality.md").read_text()
    assert "Not the defaults" in markdown and "seattle_weather" in markdown
    intervals = record["intervals"]
    assert [level["level"] for level in intervals["levels"]] == [80.0, 95.0]
    assert all(level["AutoETS"] is not None for level in intervals["levels"])
    assert "## Prediction intervals" in markdown
    assert out.rstrip().splitlines()[-1] == (
        f"results: {tmp_path / 'quality.json'} and {tmp_path / 'quality.md'}"
    )
