"""The guard: evaluation against baselines, the collapse verdict and its diagnosis, and the
refusal of models that do not beat persistence or seasonal naive on validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import computed_field

from training.baselines import Baselines, BaselineScore

# A layer whose gradient is this many times smaller than the head's has stopped learning.
VANISHING_RATIO = 1e-3
VANISHING_ABS = 1e-7
# Inputs whose training mean or std (in model-input units) exceeds this were not scaled.
UNSCALED_LIMIT = 10.0
# A feature with more than this share of its validation inputs outside their training range
# has left it (a trend, or a level shift).
OUT_OF_RANGE_SHARE = 0.05


@dataclass(frozen=True)
class SplitMetrics:
    """Errors in target units on one split, against the persistence and training-mean forecasts.

    ``std_ratio`` is std(prediction) / std(truth) on the model's raw output scale (the quantity
    the network predicts, averaged over horizon steps). In ``delta`` mode the target-unit
    forecast follows the last observed value, so a dead network still produces moving forecasts
    there; only the raw scale shows the collapse. ``level_std_ratio`` is the target-unit ratio.
    """

    n_windows: int
    mae: float
    rmse: float
    persistence_mae: float
    persistence_rmse: float
    mean_mae: float
    mean_rmse: float
    std_ratio: float
    level_std_ratio: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mae_vs_persistence(self) -> float:
        return self.mae / self.persistence_mae if self.persistence_mae > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "mae_vs_persistence": self.mae_vs_persistence}


def evaluate(
    *,
    forecast: np.ndarray,
    truth: np.ndarray,
    last_value: np.ndarray,
    train_mean: float,
    raw_pred: np.ndarray,
    raw_truth: np.ndarray,
) -> SplitMetrics:
    """All arrays are ``[n, horizon]`` except ``last_value`` ``[n]`` (the persistence forecast)."""
    persistence = np.broadcast_to(last_value[:, None], truth.shape)

    def mae(a: np.ndarray) -> float:
        return float(np.mean(np.abs(a - truth)))

    def rmse(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - truth) ** 2)))

    return SplitMetrics(
        n_windows=int(len(truth)),
        mae=mae(forecast),
        rmse=rmse(forecast),
        persistence_mae=mae(persistence),
        persistence_rmse=rmse(persistence),
        mean_mae=mae(np.full_like(truth, train_mean)),
        mean_rmse=rmse(np.full_like(truth, train_mean)),
        std_ratio=_std_ratio(raw_pred, raw_truth),
        level_std_ratio=_std_ratio(forecast, truth),
    )


def _std_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    truth_std = truth.std(axis=0)
    ratios = np.where(truth_std > 0, pred.std(axis=0) / np.maximum(truth_std, 1e-12), 0.0)
    return float(np.mean(ratios))


@dataclass
class Verdict:
    collapsed: bool
    reasons: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)


def judge(splits: dict[str, SplitMetrics], std_threshold: float) -> Verdict:
    """Collapsed when, on any evaluated split, the std ratio falls below ``std_threshold`` or the
    model does not beat the training-mean forecast."""
    verdict = Verdict(collapsed=False)
    for name, m in splits.items():
        if m.std_ratio < std_threshold:
            verdict.reasons.append(
                f"{name} prediction-std/target-std ratio {m.std_ratio:.3f} < {std_threshold}"
            )
        if not m.mae < m.mean_mae:
            verdict.reasons.append(
                f"{name} MAE {m.mae:.4g} does not beat the mean forecast's {m.mean_mae:.4g}"
            )
    verdict.collapsed = bool(verdict.reasons)
    return verdict


def vanishing_layers(grad_history: dict[str, list[float]]) -> list[str]:
    """Layers whose final gradient norm is tiny in absolute terms or next to the output head's."""
    if not grad_history:
        return []
    names = list(grad_history)
    head = grad_history[names[-1]][-1]
    flagged = []
    for name in names[:-1]:
        last = grad_history[name][-1]
        if last < VANISHING_ABS or (head > 0 and last / head < VANISHING_RATIO):
            flagged.append(name)
    return flagged


def diagnose(
    *,
    input_mean: np.ndarray,
    input_std: np.ndarray,
    feature_names: tuple[str, ...],
    grad_history: dict[str, list[float]],
    epochs_run: int,
    max_epochs: int,
    best_epoch: int,
    dropout: float,
    units: tuple[int, ...],
    target_std: float,
    anchor_period: int = 0,
) -> list[str]:
    """Name the likely causes of a collapse that the run's own evidence supports."""
    causes = []
    if anchor_period:
        causes.append(
            "the network adds next to nothing to its anchor, the last value plus the change "
            f"one period ({anchor_period} steps) earlier: that one-line forecast does as well "
            "and is already among the baselines; the rest of the change looked unpredictable "
            "from the window (try --window or more --units, or use the baseline)"
        )
    big = [
        f
        for f, m, s in zip(feature_names, input_mean, input_std, strict=True)
        if abs(m) > UNSCALED_LIMIT or s > UNSCALED_LIMIT
    ]
    if big:
        causes.append(
            "unscaled inputs: model inputs reach |mean| or std > "
            f"{UNSCALED_LIMIT:g} for {', '.join(big)}; LSTM gates saturate (drop --no-scaling)"
        )
    dead = vanishing_layers(grad_history)
    if dead:
        causes.append(
            f"vanishing gradients in {', '.join(dead)} (final norm < {VANISHING_ABS:g} or "
            f"< {VANISHING_RATIO:g} x the head's); see report.png"
        )
    if epochs_run < 5 or best_epoch >= epochs_run:
        causes.append(
            f"too few epochs: ran {epochs_run}/{max_epochs} and validation loss was still "
            "improving at the end (raise --epochs)"
        )
    if dropout >= 0.5:
        causes.append(f"heavy regularisation: --dropout {dropout} (try 0.1-0.3)")
    if max(units) < 8:
        causes.append(f"under-sized network: --units {','.join(map(str, units))}")
    if target_std <= 0:
        causes.append("the target is constant in the training split")
    if not causes:
        causes.append(
            "no single cause stood out: check the target has signal at this horizon, try more "
            "--units or epochs, and compare --target-mode delta vs level"
        )
    return causes


# ---- baselines ---------------------------------------------------------------------------------


def baselines_not_beaten(model_val_mae: float, baselines: Baselines) -> list[str]:
    """Why the model is refused: on validation its one-step MAE is not below persistence's, or
    not below the best seasonal naive's over the detected periods. Empty when it beats both.

    Each reason names the baseline that won and by how much."""
    reasons = []
    rivals: list[tuple[str, BaselineScore | None]] = [
        ("persistence", baselines.persistence),
        ("seasonal naive", baselines.best_seasonal_naive("val")),
    ]
    for label, rival in rivals:
        if rival is None or model_val_mae < rival.val_mae:
            continue
        where = f" at period {rival.period}" if rival.period else ""
        reasons.append(
            f"{label}{where} beat the model on validation: MAE {rival.val_mae:.4g} vs the "
            f"model's {model_val_mae:.4g} (the model's is {_ratio(model_val_mae, rival.val_mae)} "
            "of it)"
        )
    return reasons


def baseline_causes(
    *,
    baselines: Baselines,
    model_val_mae: float,
    steps: int,
    lags: tuple[int, ...],
    inputs_out_of_range: Mapping[str, float],
    epochs_run: int,
    max_epochs: int,
    best_epoch: int,
) -> list[str]:
    """Name the likely causes of losing to the baselines that the run's own evidence supports.

    ``steps`` is the rows the LSTM runs over and ``lags`` its seasonal lag channels: it sees a
    period no longer than ``steps`` or in ``lags``. ``inputs_out_of_range`` is, per input
    feature, the share of its validation inputs (model units) outside their training range."""
    causes = []
    left = {f: share for f, share in inputs_out_of_range.items() if share > OUT_OF_RANGE_SHARE}
    if left:
        shares = ", ".join(f"{share:.0%} of {f}'s" for f, share in left.items())
        causes.append(
            "trend or level shift pushed inputs out of their training range: "
            f"{shares} validation inputs lie outside it, so the model extrapolates"
        )
    unseen = sorted(
        {
            s.period
            for s in baselines.scores
            if s.period is not None
            and s.period > steps
            and s.period not in lags
            and not s.statistical
            and s.val_mae < model_val_mae
        }
    )
    if unseen:
        causes.append(
            f"window shorter than the season: the model sees {steps} steps and no lag at "
            f"period {', '.join(map(str, unseen))}, where seasonal baselines beat it (use "
            f"--window auto, or at least {unseen[-1]})"
        )
    if epochs_run < 5 or best_epoch >= epochs_run:
        causes.append(
            f"too few epochs: ran {epochs_run}/{max_epochs} and validation loss was still "
            "improving at the end (raise --epochs)"
        )
    if not causes:
        causes.append(
            "no single cause stood out: the series may be close to a random walk at this "
            "horizon (persistence is then hard to beat); compare the baselines in report.png"
        )
    return causes


def share_outside_range(train_inputs: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Per feature, the share of ``inputs`` ``[n, window, features]`` outside the range of
    ``train_inputs`` (same layout)."""
    if inputs.size == 0 or train_inputs.size == 0:
        return np.zeros(inputs.shape[-1])
    flat_train = train_inputs.reshape(-1, train_inputs.shape[-1])
    flat = inputs.reshape(-1, inputs.shape[-1])
    lo, hi = flat_train.min(axis=0), flat_train.max(axis=0)
    return np.asarray(((flat < lo) | (flat > hi)).mean(axis=0), dtype=np.float64)


def comparison_lines(baselines: Baselines) -> list[str]:
    """How the model compares with the baselines, in plain lines for the end of a run: its
    validation and test MAE against persistence and seasonal naive, and a NOTE when a fitted
    statistical model beat it on validation."""
    model = {"val": baselines.model_val_mae, "test": baselines.model_test_mae}
    seasonal = baselines.best_seasonal_naive("val")
    lines = []
    for split, label in (("val", "validation"), ("test", "test")):
        mae = model[split]
        if mae is None:
            continue
        parts = [f"{_ratio(mae, baselines.persistence.mae(split))} persistence"]
        if seasonal is not None:
            parts.append(
                f"{_ratio(mae, seasonal.mae(split))} seasonal naive (period {seasonal.period})"
            )
        best = baselines.best(split)
        if best.label not in ("persistence", seasonal.label if seasonal else ""):
            parts.append(f"{_ratio(mae, best.mae(split))} the best baseline, {best.label}")
        lines.append(f"{label}: one-step MAE {mae:.4g} = {', '.join(parts)}")
    rival = baselines.best_statistical("val")
    val_mae = model["val"]
    if rival is not None and val_mae is not None and rival.val_mae < val_mae:
        lines.append(
            f"NOTE: {rival.name} beat this model on validation (MAE "
            f"{_ratio(rival.val_mae, val_mae)} of the LSTM's); consider it"
        )
    return lines


def _ratio(numerator: float, denominator: float) -> str:
    if not denominator > 0 or not np.isfinite(numerator):
        return "n/a"
    return f"{numerator / denominator:.2f}x"
