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
    chance_within_target,
    console_table,
    coverage_pmf,
    interval_rows,
    main,
    markdown,
    pooled_coverage,
    series_notes,
    series_result,
    within_target,
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
    assert intervals["test_windows"] == 100 and intervals["horizon"] == 1
    at80, at95 = intervals["levels"]
    assert at80["methods"]["normalized"] == {"coverage": 0.81, "mean_width": 2.2}
    assert at80["AutoETS"] == {"coverage": 0.70, "mean_width": 4.0}
    assert at80["width_vs_AutoETS"] == pytest.approx(0.5)
    assert at80["coverage_target"]["met"] is False  # 84 % is 4 points off 80 %
    assert at95["coverage_target"]["met"] is True
    assert at80["coverage_target"]["p_within_if_exact"] == pytest.approx(
        chance_within_target(100, 100, 80.0), abs=1e-4
    )
    results = {"series": [record]}
    header, (row, pooled) = interval_rows(results)
    assert header[3] == "80% absolute (served)" and header[6] == "80% AutoETS"
    assert row[3] == "84.0% / 2" and row[6] == "70.0% / 4" and row[7] == "0.50"
    assert row[-1] == "80% MISSED, 95% met"
    assert pooled[0] == "pooled (1 series)" and pooled[3] == "84.0%"


# --------------------------------------------------------------------------------------------
# How noisy the coverage check is, and the pooled coverage
# --------------------------------------------------------------------------------------------


def _simulated_covered(n: int, m: int, level: float, trials: int, seed: int) -> np.ndarray:
    """Split conformal run ``trials`` times on exchangeable data: ``n`` calibration and ``m``
    test absolute errors of one continuous distribution, the bound the trainer's rank
    ``ceil((n + 1) level / 100)`` of the calibration errors; the covered test windows each time."""
    rng = np.random.default_rng(seed)
    rank = int(np.ceil((n + 1) * level / 100))
    bound = np.sort(np.abs(rng.standard_normal((trials, n))), axis=1)[:, rank - 1]
    return (np.abs(rng.standard_normal((trials, m))) <= bound[:, None]).sum(axis=1)


def test_coverage_pmf_matches_simulated_split_conformal():
    n, m, level = 227, 227, 80.0  # co2's windows
    covered = _simulated_covered(n, m, level, trials=20_000, seed=15)
    pmf = coverage_pmf(n, m, level)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert (pmf >= 0).all()
    # Mean coverage r / (n + 1) with r = 183: just above the level, as split conformal promises.
    assert np.arange(m + 1) @ pmf / m == pytest.approx(183 / 228)
    within = chance_within_target(n, m, level)
    simulated = np.mean(np.abs(100 * covered / m - level) <= 3 + 1e-9)
    assert within == pytest.approx(simulated, abs=0.015)  # 4 Monte Carlo standard errors
    assert within == pytest.approx(0.587, abs=0.001)
    assert pmf[np.arange(m + 1) / m >= 0.85 - 1e-12].sum() == pytest.approx(0.108, abs=0.001)
    assert chance_within_target(n, m, 95.0) == pytest.approx(0.882, abs=0.001)


def test_coverage_pmf_equals_scipys_beta_binomial():
    stats = pytest.importorskip("scipy.stats")
    for n, m, level in ((227, 227, 80.0), (205, 150, 95.0), (10, 7, 50.0)):
        r = int(np.ceil((n + 1) * level / 100))
        expected = stats.betabinom(m, r, n + 1 - r).pmf(np.arange(m + 1))
        np.testing.assert_allclose(coverage_pmf(n, m, level), expected, rtol=1e-9, atol=1e-15)


def test_coverage_pmf_symmetric_and_limit_cases():
    # At 50 % with n odd the rank is (n + 1) / 2: Beta(r, r), symmetric about half covered.
    pmf = coverage_pmf(99, 40, 50.0)
    np.testing.assert_allclose(pmf, pmf[::-1], rtol=1e-12)
    # Rank past n (10 windows at 95 %: rank 11): the bound is infinite, every window covered.
    assert coverage_pmf(10, 30, 95.0).tolist() == [0.0] * 30 + [1.0]
    assert chance_within_target(10, 30, 95.0) == 0.0
    assert chance_within_target(10, 30, 95.0, points=5.0) == 1.0
    # One test window covers 0 % or 100 %: never within 3 points of 80 %; always within 100.
    assert chance_within_target(227, 1, 80.0) == 0.0
    assert chance_within_target(227, 1, 80.0, points=100.0) == pytest.approx(1.0)
    # More windows, less noise; with very many the check almost always passes.
    chances = [chance_within_target(w, w, 80.0) for w in (187, 227, 684, 1242, 20_000)]
    assert chances == sorted(chances) and chances[-1] > 0.9999
    with pytest.raises(ValueError):
        coverage_pmf(0, 10, 80.0)


def test_within_target_includes_its_bounds_despite_rounding():
    assert 100 * (57 / 100) != 57.0  # 56.99999999999999
    assert within_target(100 * (57 / 100), 60.0)
    assert within_target(83.0, 80.0) and within_target(77.0, 80.0)
    assert not within_target(83.01, 80.0)


def _interval_record(name: str, n: int, m: int, c80: float, c95: float, ets80: float) -> dict:
    """A series record holding what the intervals table reads (coverage of ``m`` windows)."""

    def level(level: float, coverage: float, ets: float | None) -> dict:
        return {
            "level": level,
            "methods": {
                "absolute": {"coverage": coverage, "mean_width": 1.0},
                "normalized": {"coverage": coverage, "mean_width": 1.5},
            },
            "AutoETS": None if ets is None else {"coverage": ets, "mean_width": 2.0},
            "width_vs_AutoETS": None if ets is None else 0.5,
            "coverage_target": {
                "value": round(100 * coverage, 2),
                "limit": f"{level:g} +/- 3",
                "met": within_target(100 * coverage, level),
            },
        }

    return {
        "name": name,
        **DATASETS["co2"].describe(),
        "rows": 2000,
        "training": {"timed_out": False, "exit_code": 0},
        "model": {"test_windows": m},
        "intervals": {
            "method": "absolute",
            "calibration_windows": n,
            "methods": ["absolute", "normalized"],
            "AutoETS_note": "ETS AANN",
            "levels": [level(80.0, c80, ets80), level(95.0, c95, None)],
        },
    }


def _results(series: list[dict]) -> dict:
    """A benchmark record around ``series``, as ``main`` writes it (for :func:`markdown`)."""
    return {
        "command": "python -m benchmarks.quality",
        "started_at": "2026-11-29T12:39:56Z",
        "finished_at": "2026-11-29T12:44:51Z",
        "git": {"commit": "abc1234", "uncommitted_training": []},
        "machine": {
            "cpu_model": "CPU",
            "usable_cores": 2,
            "memory_gib": 8,
            "load_average_1m_at_start": 0.5,
            "tensorflow": "2.21.0",
        },
        "statsforecast": "2.1.1",
        "training_command": "python -m training.train",
        "extra_training_args": [],
        "series": series,
    }


def test_pooled_coverage_weighs_each_series_by_its_test_windows():
    series = [
        _interval_record("big", 900, 800, 640 / 800, 760 / 800, 0.75),  # 80.0 %, 95.0 %
        _interval_record("small", 227, 200, 170 / 200, 196 / 200, 0.70),  # 85.0 %, 98.0 %
        {"name": "untrained", "rows": 10},
    ]
    at80, at95 = pooled_coverage(series)
    assert at80["series"] == ["big", "small"]
    assert (at80["calibration_windows"], at80["test_windows"]) == (1127, 1000)
    assert at80["methods"]["absolute"] == pytest.approx(810 / 1000)  # not (80 + 85) / 2
    assert at80["AutoETS"] == pytest.approx((600 + 140) / 1000)
    assert at95["AutoETS"] is None  # a series without it: no pooled figure
    assert at80["coverage_target"]["value"] == 81.0 and at80["coverage_target"]["met"] is True
    assert at95["coverage_target"]["value"] == 95.6
    # The pooled chance is the sum of the two counts' distributions, not either alone.
    together = np.convolve(coverage_pmf(900, 800, 80.0), coverage_pmf(227, 200, 80.0))
    within = sum(p for k, p in enumerate(together) if abs(k / 10 - 80) <= 3 + 1e-9)
    assert at80["coverage_target"]["p_within_if_exact"] == pytest.approx(within, abs=1e-4)
    assert within > chance_within_target(900, 800, 80.0) > chance_within_target(227, 200, 80.0)
    # One series pooled is that series, its miss included.
    (alone, _) = pooled_coverage(series[1:2])
    assert alone["coverage_target"]["met"] is False
    assert alone["coverage_target"]["p_within_if_exact"] == pytest.approx(
        chance_within_target(227, 200, 80.0), abs=1e-4
    )


def test_pooled_coverage_leaves_out_multi_step_series_and_falls_back_to_test_windows():
    multi = _interval_record("multi", 300, 300, 0.8, 0.95, 0.7)
    multi["intervals"]["horizon"] = 24
    unknown = _interval_record("unknown", 0, 250, 0.8, 0.95, 0.7)  # no calibration count
    (at80, _) = pooled_coverage([multi, unknown])
    assert at80["series"] == ["unknown"]
    assert at80["calibration_windows"] == 250  # n taken as m
    assert pooled_coverage([multi]) == []
    _, (multi_row, unknown_row, pooled) = interval_rows(_results([multi, unknown]))
    assert multi_row[:5] == ["multi", "300", "300", "80.0% / 1", "-"]
    assert unknown_row[:5] == ["unknown", "-", "250", "80.0% / 1", "0.60 (n = m)"]
    assert pooled[:3] == ["pooled (1 series)", "250", "250"]


def test_interval_table_shows_windows_chance_and_pooled_row():
    series = [
        _interval_record("co2", 227, 227, 193 / 227, 219 / 227, 0.727),
        _interval_record("sf_temps", 1242, 1242, 995 / 1242, 1181 / 1242, 0.668),
    ]
    results = _results(series)
    header, (co2, sf, pooled) = interval_rows(results)
    assert header[:6] == [
        "series",
        "calib. windows n",
        "test windows m",
        "80% absolute (served)",
        "80% P(within +/-3) if exact",
        "80% normalized",
    ]
    assert header[9] == "95% P(within +/-3) if exact"
    assert co2[:5] == ["co2", "227", "227", "85.0% / 1", "0.59"]
    assert co2[9] == "0.88" and co2[-1] == "80% MISSED, 95% met"
    assert sf[4] == "0.94" and sf[9] == "> 0.99"
    assert pooled[:5] == ["pooled (2 series)", "1469", "1469", "80.9%", "0.96"]
    assert pooled[5:8] == ["80.9%", "67.7%", "-"]  # coverage only: widths do not pool
    assert pooled[-1] == "80% met, 95% met"
    text = markdown(results)
    assert "| pooled (2 series) | 1469 | 1469 | 80.9% | 0.96 | 80.9% | 67.7% | - |" in text
    assert "the less noisy measurement" in text and "stays as measured" in text
    console = console_table(results)
    assert "pooled (2 series)" in console and "\nP(within +/-3) if exact: the chance" in console
    (missed,) = [n for n in series_notes(series[0]) if "MISSED" in n]
    assert missed == (
        "target coverage at 80% MISSED: 85.0% outside 80 +/- 3 (an exactly calibrated method "
        "lands within it with probability 0.59 on 227 calibration and 227 test windows)"
    )


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
