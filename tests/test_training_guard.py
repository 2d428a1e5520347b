"""The guard: metrics, the collapse verdict and its diagnosis, and the refusal of models that do
not beat persistence or seasonal naive (training/guard.py, and end to end through the CLI)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from datetime import datetime, timedelta

import numpy as np
import pytest

from training.artifacts import list_versions
from training.baselines import Baselines, BaselineScore
from training.guard import (
    SplitMetrics,
    baseline_causes,
    baselines_not_beaten,
    comparison_lines,
    diagnose,
    evaluate,
    judge,
    share_outside_range,
    vanishing_layers,
)
from training.train import main


@pytest.fixture
def healthy() -> SplitMetrics:
    """Metrics of a model that tracks the target and beats both baselines."""
    return SplitMetrics(
        n_windows=200,
        mae=1.0,
        rmse=1.3,
        persistence_mae=2.0,
        persistence_rmse=2.5,
        mean_mae=8.0,
        mean_rmse=9.0,
        std_ratio=0.7,
        level_std_ratio=1.0,
    )


@pytest.fixture
def diagnose_inputs() -> dict:
    """Evidence from an unremarkable run: scaled inputs, live gradients, enough epochs."""
    return {
        "input_mean": np.array([0.1, -0.2]),
        "input_std": np.array([1.0, 0.9]),
        "feature_names": ("load", "temp"),
        "grad_history": {"lstm_0": [1.0, 0.3], "head": [1.0, 0.5]},
        "epochs_run": 20,
        "max_epochs": 30,
        "best_epoch": 15,
        "dropout": 0.2,
        "units": (64, 32),
        "target_std": 3.0,
    }


# ---- judge ----------------------------------------------------------------------------------


def test_judge_accepts_healthy_model(healthy):
    verdict = judge({"val": healthy, "test": healthy}, std_threshold=0.1)

    assert verdict.collapsed is False
    assert verdict.reasons == []


def test_judge_rejects_low_std_ratio(healthy):
    flat = dataclasses.replace(healthy, std_ratio=0.02)

    verdict = judge({"val": flat, "test": healthy}, std_threshold=0.1)

    assert verdict.collapsed is True
    assert verdict.reasons == ["val prediction-std/target-std ratio 0.020 < 0.1"]


def test_judge_rejects_model_not_beating_mean_forecast(healthy):
    worse = dataclasses.replace(healthy, mae=9.0)

    verdict = judge({"val": healthy, "test": worse}, std_threshold=0.1)

    assert verdict.collapsed is True
    assert verdict.reasons == ["test MAE 9 does not beat the mean forecast's 8"]


def test_judge_rejects_tie_with_mean_forecast(healthy):
    tie = dataclasses.replace(healthy, mae=healthy.mean_mae)

    assert judge({"test": tie}, std_threshold=0.1).collapsed is True


def test_judge_rejects_nan_error(healthy):
    broken = dataclasses.replace(healthy, mae=float("nan"))

    assert judge({"test": broken}, std_threshold=0.1).collapsed is True


def test_judge_reports_every_failure(healthy):
    dead = dataclasses.replace(healthy, std_ratio=0.0, mae=10.0)

    verdict = judge({"val": dead, "test": dead}, std_threshold=0.1)

    assert len(verdict.reasons) == 4


def test_judge_threshold_is_exclusive(healthy):
    at_threshold = dataclasses.replace(healthy, std_ratio=0.25)

    assert judge({"val": at_threshold}, std_threshold=0.25).collapsed is False
    assert judge({"val": at_threshold}, std_threshold=0.26).collapsed is True


# ---- vanishing gradients --------------------------------------------------------------------


def test_vanishing_layers_flags_tiny_absolute_norm():
    history = {"lstm_0": [0.5, 1e-9], "lstm_1": [0.5, 0.4], "head": [0.1, 1e-6]}

    assert vanishing_layers(history) == ["lstm_0"]


def test_vanishing_layers_flags_norm_small_next_to_head():
    history = {"lstm_0": [1.0, 5e-4], "lstm_1": [1.0, 2e-3], "head": [1.0, 1.0]}

    assert vanishing_layers(history) == ["lstm_0"]


def test_vanishing_layers_accepts_healthy_gradients():
    history = {"lstm_0": [1.0, 0.2], "lstm_1": [1.0, 0.3], "head": [1.0, 0.5]}

    assert vanishing_layers(history) == []


def test_vanishing_layers_judges_final_epoch_only():
    history = {"lstm_0": [1e-12, 0.2], "head": [1.0, 0.5]}

    assert vanishing_layers(history) == []


def test_vanishing_layers_never_flags_head():
    assert vanishing_layers({"lstm_0": [0.3], "head": [0.0]}) == []
    assert vanishing_layers({}) == []


# ---- evaluate -------------------------------------------------------------------------------


def test_evaluate_scores_model_and_baselines():
    truth = np.array([[10.0], [12.0], [14.0], [16.0]])
    last_value = np.array([9.0, 10.0, 12.0, 14.0])
    forecast = truth + np.array([[1.0], [-1.0], [1.0], [-1.0]])

    metrics = evaluate(
        forecast=forecast,
        truth=truth,
        last_value=last_value,
        train_mean=11.0,
        raw_pred=forecast - 10.0,
        raw_truth=truth - 10.0,
    )

    assert metrics.n_windows == 4
    assert metrics.mae == pytest.approx(1.0)
    assert metrics.rmse == pytest.approx(1.0)
    assert metrics.persistence_mae == pytest.approx((1 + 2 + 2 + 2) / 4)
    assert metrics.mean_mae == pytest.approx((1 + 1 + 3 + 5) / 4)
    assert metrics.mean_rmse == pytest.approx(np.sqrt((1 + 1 + 9 + 25) / 4))
    assert metrics.std_ratio == pytest.approx(np.std(forecast) / np.std(truth))
    assert metrics.mae_vs_persistence == pytest.approx(1.0 / 1.75)
    assert metrics.to_dict()["mae_vs_persistence"] == pytest.approx(1.0 / 1.75)


def test_evaluate_constant_raw_output_has_zero_std_ratio():
    truth = np.array([[1.0, 2.0], [3.0, 5.0], [2.0, 1.0]])

    metrics = evaluate(
        forecast=truth,
        truth=truth,
        last_value=np.zeros(3),
        train_mean=0.0,
        raw_pred=np.full_like(truth, 0.4),
        raw_truth=truth,
    )

    assert metrics.std_ratio == pytest.approx(0.0, abs=1e-12)
    assert metrics.level_std_ratio == pytest.approx(1.0)


# ---- diagnose -------------------------------------------------------------------------------


def test_diagnose_names_unscaled_inputs(diagnose_inputs):
    diagnose_inputs["input_mean"] = np.array([24_000.0, 0.1])
    diagnose_inputs["input_std"] = np.array([2_700.0, 1.0])

    causes = diagnose(**diagnose_inputs)

    assert len(causes) == 1
    assert causes[0].startswith("unscaled inputs")
    assert "for load;" in causes[0]


def test_diagnose_names_vanishing_gradients_and_short_training(diagnose_inputs):
    diagnose_inputs["grad_history"] = {"lstm_0": [1.0, 1e-10], "head": [1.0, 0.5]}
    diagnose_inputs["epochs_run"] = 3
    diagnose_inputs["best_epoch"] = 3

    causes = diagnose(**diagnose_inputs)

    assert [c.split(" ")[0] for c in causes] == ["vanishing", "too"]
    assert "lstm_0" in causes[0]


def test_diagnose_names_a_network_that_adds_nothing_to_its_seasonal_anchor(diagnose_inputs):
    diagnose_inputs["anchor_period"] = 336

    causes = diagnose(**diagnose_inputs)

    assert len(causes) == 1
    assert causes[0].startswith("the network adds next to nothing to its anchor")
    assert "one period (336 steps) earlier" in causes[0]


def test_diagnose_falls_back_to_generic_advice(diagnose_inputs):
    causes = diagnose(**diagnose_inputs)

    assert len(causes) == 1
    assert causes[0].startswith("no single cause stood out")


# ---- baselines --------------------------------------------------------------------------------


def score(name, val, test, period=None, statistical=False) -> BaselineScore:
    return BaselineScore(
        name=name, period=period, statistical=statistical, val_mae=val, test_mae=test, seconds=0.0
    )


@pytest.fixture
def baselines() -> Baselines:
    """Persistence 2.0; seasonal naive 3.0 at 24 and 1.5 at 168; AutoETS 1.2 on validation."""
    return Baselines(
        periods=(24, 168),
        scores=(
            score("persistence", 2.0, 2.2),
            score("seasonal_naive", 3.0, 3.3, period=24),
            score("seasonal_naive", 1.5, 1.6, period=168),
            score("persistence_seasonal_change", 1.4, 1.5, period=168),
            score("AutoETS", 1.2, 1.4, period=24, statistical=True),
            score("AutoTheta", 1.3, 1.3, period=24, statistical=True),
        ),
        model_val_mae=1.0,
        model_test_mae=1.1,
    )


def causes_for(baselines, **evidence) -> list[str]:
    arguments = {
        "baselines": baselines,
        "model_val_mae": 1.0,
        "steps": 48,
        "lags": (),
        "inputs_out_of_range": {"load": 0.0, "temp": 0.01},
        "epochs_run": 20,
        "max_epochs": 30,
        "best_epoch": 15,
    }
    return baseline_causes(**{**arguments, **evidence})


def test_model_beating_persistence_and_seasonal_naive_passes(baselines):
    assert baselines_not_beaten(1.0, baselines) == []


def test_model_not_beating_persistence_is_refused_naming_it(baselines):
    reasons = baselines_not_beaten(2.5, baselines)

    assert reasons == [
        "persistence beat the model on validation: MAE 2 vs the model's 2.5 (the model's is "
        "1.25x of it)",
        "seasonal naive at period 168 beat the model on validation: MAE 1.5 vs the model's 2.5 "
        "(the model's is 1.67x of it)",
    ]


def test_best_seasonal_naive_over_the_periods_is_the_bar(baselines):
    """1.6 beats persistence (2.0) and seasonal naive at 24 (3.0), not at 168 (1.5)."""
    (reason,) = baselines_not_beaten(1.6, baselines)

    assert reason.startswith("seasonal naive at period 168 beat the model")


def test_tie_with_a_baseline_is_refused(baselines):
    """A ratio of 1.0 is refused: the model must beat the baseline."""
    (reason,) = baselines_not_beaten(1.5, baselines)

    assert "(the model's is 1.00x of it)" in reason


def test_statistical_baselines_never_refuse_a_model(baselines):
    """AutoETS beats 1.25; only persistence and seasonal naive are the guard's bar."""
    assert baselines_not_beaten(1.25, baselines) == []


def test_without_periods_only_persistence_is_the_bar():
    only = Baselines(periods=(), scores=(score("persistence", 2.0, 2.0),))

    assert baselines_not_beaten(1.9, only) == []
    assert len(baselines_not_beaten(2.0, only)) == 1


def test_nan_model_error_is_refused(baselines):
    assert len(baselines_not_beaten(float("nan"), baselines)) == 2


def test_baseline_causes_name_inputs_out_of_range(baselines):
    causes = causes_for(baselines, inputs_out_of_range={"load": 0.37, "temp": 0.01})

    assert causes == [
        "trend or level shift pushed inputs out of their training range: 37% of load's "
        "validation inputs lie outside it, so the model extrapolates"
    ]


def test_baseline_causes_name_a_window_shorter_than_the_season(baselines):
    causes = causes_for(baselines, model_val_mae=1.45, steps=48)

    assert len(causes) == 1
    assert causes[0].startswith("window shorter than the season: the model sees 48 steps")
    assert "period 168" in causes[0]


def test_baseline_causes_count_a_lag_channel_as_seeing_the_season(baselines):
    causes = causes_for(baselines, model_val_mae=1.45, steps=48, lags=(168,))

    assert causes[0].startswith("no single cause stood out")


def test_baseline_causes_name_too_few_epochs(baselines):
    causes = causes_for(baselines, epochs_run=3, best_epoch=3, max_epochs=3)

    assert causes == [
        "too few epochs: ran 3/3 and validation loss was still improving at the end "
        "(raise --epochs)"
    ]


def test_share_outside_range_is_per_feature():
    train = np.array([[[0.0, 10.0], [1.0, 20.0]]])  # [1 window, 2 rows, 2 features]
    later = np.array([[[0.5, 25.0], [2.0, 15.0]], [[1.0, 30.0], [-1.0, 10.0]]])

    np.testing.assert_allclose(share_outside_range(train, later), [0.5, 0.5])


def test_comparison_lines_say_how_the_model_compares(baselines):
    lines = comparison_lines(baselines)

    assert lines == [
        "validation: one-step MAE 1 = 0.50x persistence, 0.67x seasonal naive (period 168), "
        "0.83x the best baseline, AutoETS(24)",
        "test: one-step MAE 1.1 = 0.50x persistence, 0.69x seasonal naive (period 168), "
        "0.85x the best baseline, AutoTheta(24)",
    ]


def test_comparison_lines_note_a_statistical_model_that_beat_the_lstm(baselines):
    worse = dataclasses.replace(baselines, model_val_mae=1.25)

    lines = comparison_lines(worse)

    assert lines[0] == (
        "validation: one-step MAE 1.25 = 0.62x persistence, 0.83x seasonal naive (period 168), "
        "1.04x the best baseline, AutoETS(24)"
    )
    assert lines[-1] == (
        "NOTE: AutoETS beat this model on validation (MAE 0.96x of the LSTM's); consider it"
    )


# ---- the baseline guard, end to end -------------------------------------------------------------


def write_csv(path, header, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def trend_break_csv(tmp_path):
    """A random walk that drifts up by 1 a step through the training split and stops at its
    end: a model that learned the drift keeps predicting it, and persistence wins."""
    rng = np.random.default_rng(5)
    n, train = 1500, 1050
    value = 100 + np.cumsum(np.where(np.arange(n) < train, 1.0, 0.0) + rng.normal(0, 0.3, n))
    path = tmp_path / "trend_break.csv"
    write_csv(path, ["step", "value"], ([i, f"{v:.4f}"] for i, v in enumerate(value)))
    return path


@pytest.fixture
def daily_cycle_csv(tmp_path):
    """1500 hours of a clean daily cycle: seasonal naive at 24 is nearly exact."""
    rng = np.random.default_rng(5)
    t = np.arange(1500)
    value = 50 + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.1, len(t))
    start = datetime(2024, 1, 1)
    rows = ([(start + timedelta(hours=int(i))).isoformat(), f"{value[i]:.4f}"] for i in t)
    path = tmp_path / "daily_cycle.csv"
    write_csv(path, ["time", "value"], rows)
    return path


QUICK = ["--units", "16", "--epochs", "1", "--batch-size", "64"]


def error_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's and the log's lines."""
    return [line for line in stderr.splitlines() if line.startswith(("REJECTED", "  "))]


def train(capsys, csv_path, output, *flags) -> tuple[int, str, str]:
    exit_code = main(
        ["--data", str(csv_path), "--target", "value", *QUICK, *flags, "--output", str(output)]
    )
    captured = capsys.readouterr()
    return exit_code, captured.out, captured.err


@pytest.mark.slow
def test_model_losing_to_persistence_is_refused(capsys, tmp_path, trend_break_csv):
    # --std-ratio-threshold 0: the collapse rule stays out of the way.
    flags = ["--window", "8", "--std-ratio-threshold", "0"]

    exit_code, out, err = train(capsys, trend_break_csv, tmp_path, *flags)

    assert exit_code == 3
    assert list_versions(tmp_path) == []
    (rejected,) = (tmp_path / ".rejected").iterdir()
    report = json.loads((rejected / "report.json").read_text())
    assert report["guard"]["collapsed"] is False
    (reason,) = report["baselines"]["guard_reasons"]
    assert reason.startswith("persistence beat the model on validation: MAE ")
    lines = error_lines(err)
    assert lines[0] == (
        "REJECTED: the model does not beat the baselines on validation; nothing was published."
    )
    assert lines[1] == f"  why: {reason}"
    assert any(line.startswith("  likely cause: ") for line in lines)
    assert lines[-1].endswith("(override with --allow-worse-than-baselines)")
    assert re.search(r"^validation: one-step MAE \S+ = 1\.\d\dx persistence", out, re.MULTILINE)
    assert "Traceback" not in err


@pytest.mark.slow
def test_allow_worse_than_baselines_publishes_with_a_warning(capsys, tmp_path, trend_break_csv):
    flags = ["--window", "8", "--std-ratio-threshold", "0", "--allow-worse-than-baselines"]

    exit_code, out, err = train(capsys, trend_break_csv, tmp_path, *flags)

    assert exit_code == 0
    (version,) = list_versions(tmp_path)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["baselines"]["published_despite_baselines"] is True
    assert manifest["baselines"]["guard_reasons"][0].startswith("persistence beat the model")
    assert (
        "WARNING: published a model that does not beat the baselines because of "
        "--allow-worse-than-baselines: persistence beat the model" in err
    )
    stdout = out.splitlines()
    assert stdout[-1].startswith(f"published {version} ")
    assert stdout[-3].startswith("validation: one-step MAE ")
    assert stdout[-2].startswith("test: one-step MAE ")


@pytest.mark.slow
def test_model_losing_to_seasonal_naive_is_refused_with_the_window_as_cause(
    capsys, tmp_path, daily_cycle_csv
):
    exit_code, _, err = train(capsys, daily_cycle_csv, tmp_path, "--window", "12")

    assert exit_code == 3
    assert list_versions(tmp_path) == []
    assert "  why: seasonal naive at period 24 beat the model on validation" in err
    assert (
        "  likely cause: window shorter than the season: the model sees 12 steps and no lag at "
        "period 24" in err
    )


@pytest.mark.slow
def test_published_version_records_its_baselines(trained_version):
    manifest = json.loads((trained_version / "manifest.json").read_text())
    report = json.loads((trained_version / "report.json").read_text())

    baselines = manifest["baselines"]
    assert baselines == report["baselines"]
    assert baselines["periods"] == [24, 168]
    names = {(s["name"], s.get("period")) for s in baselines["scores"]}
    assert {("persistence", None), ("seasonal_naive", 24), ("seasonal_naive", 168)} <= names
    assert {("persistence_seasonal_change", 168), ("AutoETS", 24), ("MSTL", None)} <= names
    assert "season 24 > 12" in baselines["skipped"]["AutoARIMA"]
    # Horizon 1: the one-step MAE is the model's MAE, and persistence the guard's persistence.
    val = manifest["metrics"]["val"]
    assert baselines["model_val_mae"] == pytest.approx(val["mae"])
    persistence = next(s for s in baselines["scores"] if s["name"] == "persistence")
    assert persistence["val_mae"] == pytest.approx(val["persistence_mae"])
    assert baselines["guard_reasons"] == []
