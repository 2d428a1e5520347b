"""The collapse guard: metrics, verdict and diagnosis (training/guard.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from training.guard import SplitMetrics, diagnose, evaluate, judge, vanishing_layers


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


def test_diagnose_falls_back_to_generic_advice(diagnose_inputs):
    causes = diagnose(**diagnose_inputs)

    assert len(causes) == 1
    assert causes[0].startswith("no single cause stood out")
