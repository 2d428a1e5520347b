"""The collapse guard: evaluation against baselines, the collapse verdict, and its diagnosis."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import computed_field

# A layer whose gradient is this many times smaller than the head's has stopped learning.
VANISHING_RATIO = 1e-3
VANISHING_ABS = 1e-7
# Inputs whose training mean or std (in model-input units) exceeds this were not scaled.
UNSCALED_LIMIT = 10.0


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
) -> list[str]:
    """Name the likely causes of a collapse that the run's own evidence supports."""
    causes = []
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
