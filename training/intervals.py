"""Prediction intervals by split conformal prediction: calibrated at training time on the
validation split, applied at serving time at any level. Training and serving share this one
implementation, as they share :mod:`training.transform`; the service must never grow a copy.

Calibration. For each horizon step ``k`` and each of the ``n`` validation windows ``i`` the
*nonconformity score* is ``s_ik = |y_ik - f_ik| / sigma_i``: the absolute error of the forecast
``f`` in units of the window's scale ``sigma_i``. With the ``absolute`` method ``sigma`` is 1
(target units); with ``normalized`` it is the window's local scale (:func:`local_scale`), the
typical one-step error of the model's anchor over the rows the LSTM sees, so that calm windows
get narrow intervals and volatile ones wide. The sorted scores of every step are the manifest's
``intervals`` section.

Application. At level ``a`` (percent) the interval of a window with forecast ``f`` and scale
``sigma`` is ``f -/+ q_k(a) * sigma`` where ``q_k(a)`` is the ``ceil((n + 1) a / 100)``-th
smallest score at step ``k``: the finite-sample split-conformal quantile. For a new window
exchangeable with the validation windows it covers the outcome with probability at least
``a`` (Vovk et al. 2005; Lei et al. 2018), with either method, since ``sigma`` is a fixed
function of the window alone. When ``ceil((n + 1) a / 100) > n`` no finite bound has that
guarantee, and the bounds are infinite. Any level in (0, 100) is served exactly: the scores
are stored, not a grid of levels.

Guarantees that hold whatever the data: ``q_k`` does not decrease with the level and
``sigma > 0`` (floored at ``scale_floor``), so ``lo <= f <= hi`` and a wider level's interval
contains every narrower one's. A time series is not exchangeable, so the coverage on later data
is measured rather than assumed: training scores both methods on the test split
(:func:`score`), and the manifest and ``report.json`` carry the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from training.config import INTERVAL_METHODS

if TYPE_CHECKING:
    from training.transform import WindowTransform

REPORTED_LEVELS = (80.0, 95.0)
"""The levels (percent) whose coverage and width training reports."""
SCALE_FLOOR_SHARE = 0.1
"""The least local scale, as a share of the median over the training split's windows: a window
whose target did not move (an imputed stretch) still gets an interval."""


@dataclass(frozen=True, kw_only=True)
class IntervalScore:
    """How intervals at one level did on held-out points: the share of outcomes inside them and
    their mean width (target units)."""

    level: float  # percent
    coverage: float  # 0..1
    mean_width: float


@dataclass(frozen=True, kw_only=True)
class IntervalCalibration:
    """The manifest's ``intervals`` section: everything needed to serve intervals at any level,
    and how they did on the test split."""

    method: str  # "normalized" or "absolute"
    scores: tuple[tuple[float, ...], ...]  # per horizon step: the validation windows'
    # nonconformity scores, ascending (target units with "absolute"; local scales otherwise)
    scale_floor: float = 1.0  # target units: the least local scale ("normalized")
    test: tuple[IntervalScore, ...] = ()  # at REPORTED_LEVELS, every test window and step
    # The test figures of every method, the one chosen included: the measurement behind the
    # default, recorded with each run.
    methods: Mapping[str, tuple[IntervalScore, ...]] = field(default_factory=dict)

    @property
    def windows(self) -> int:
        """The calibration windows (``n``)."""
        return len(self.scores[0]) if self.scores else 0


@dataclass(frozen=True)
class ForecastIntervals:
    """Intervals of ``n`` forecasts at ``L`` levels, in target units."""

    levels: tuple[float, ...]  # percent, in the order asked for
    lo: np.ndarray  # [n, L, horizon] float64
    hi: np.ndarray  # [n, L, horizon] float64


def local_scale(raw_windows: np.ndarray, transform: WindowTransform) -> np.ndarray:
    """The scale of each raw window ``[n, window, features]`` (training units), ``[n]`` in target
    units: the mean absolute one-step error, over the rows the LSTM sees, of the forecast the
    model is anchored at (persistence ``y[t-1]``, or with an anchor period ``p`` persistence
    plus the seasonal change ``y[t-1] + y[t-p] - y[t-1-p]``). Training calibrates and serving
    applies with this one function."""
    y = np.asarray(raw_windows, dtype=np.float64)[:, :, transform.target_index]
    window, p = y.shape[1], transform.anchor_period
    start = max(window - transform.steps + 1, p + 1, 1)
    errors = y[:, start:] - y[:, start - 1 : window - 1]
    if p:
        errors -= y[:, start - p : window - p] - y[:, start - 1 - p : window - 1 - p]
    if errors.shape[1] == 0:  # a window of one row: no change to measure
        return np.zeros(len(y))
    scale: np.ndarray = np.mean(np.abs(errors), axis=1)
    return scale


def window_scales(
    method: str, floor: float, raw_windows: np.ndarray, transform: WindowTransform
) -> np.ndarray:
    """``[n]``: the local scale of each window floored at ``floor`` with ``normalized``; 1 with
    ``absolute``."""
    if method == "absolute":
        return np.ones(len(raw_windows))
    scales: np.ndarray = np.maximum(local_scale(raw_windows, transform), floor)
    return scales


def fit_calibration(
    method: str,
    *,
    forecasts: np.ndarray,
    truth: np.ndarray,
    raw_windows: np.ndarray,
    train_windows: np.ndarray,
    transform: WindowTransform,
) -> IntervalCalibration:
    """The calibration of ``method`` from held-out forecasts ``[n, horizon]``, their outcomes
    ``[n, horizon]`` and raw windows ``[n, window, features]``. ``train_windows`` (raw windows of
    the training split) set the scale floor only."""
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}")
    if len(forecasts) == 0:
        raise ValueError("no calibration windows")
    floor = 1.0
    if method == "normalized":
        typical = float(np.median(local_scale(train_windows, transform)))
        floor = SCALE_FLOOR_SHARE * typical if typical > 0 else 1.0
    sigma = window_scales(method, floor, raw_windows, transform)
    scores = np.sort(np.abs(truth - forecasts) / sigma[:, None], axis=0)
    return IntervalCalibration(
        method=method,
        scores=tuple(tuple(float(s) for s in step) for step in scores.T),
        scale_floor=floor,
    )


def conformal_rank(n: int, level: float) -> int:
    """The 1-based rank ``ceil((n + 1) level / 100)`` of the conformal quantile among ``n``
    scores (``n + 1`` or more: no finite quantile). A level whose product is an integer up to
    floating-point error (80 % of 1,001) is not pushed one rank up."""
    return max(1, math.ceil((n + 1) * level / 100.0 - 1e-9))


class Conformal:
    """An :class:`IntervalCalibration` ready to apply: its scores as arrays."""

    def __init__(self, calibration: IntervalCalibration, transform: WindowTransform) -> None:
        self.calibration = calibration
        self.transform = transform
        # [horizon, n], ascending per step, with +inf appended: rank n + 1 reads infinity.
        steps = len(calibration.scores)
        scores = np.asarray(calibration.scores, dtype=np.float64).reshape(steps, -1)
        self._scores = np.concatenate([scores, np.full((len(scores), 1), np.inf)], axis=1)

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """``[L, horizon]``: the conformal quantile of the scores at each level and step."""
        n = self._scores.shape[1] - 1
        ranks = np.array([min(conformal_rank(n, level), n + 1) for level in levels], np.int64)
        return np.ascontiguousarray(self._scores[:, ranks - 1].T)

    def scales(self, raw_windows: np.ndarray) -> np.ndarray:
        """``[n]``: the scale of each window (see :func:`window_scales`)."""
        c = self.calibration
        return window_scales(c.method, c.scale_floor, raw_windows, self.transform)

    def bounds(
        self, forecasts: np.ndarray, raw_windows: np.ndarray, levels: Sequence[float]
    ) -> ForecastIntervals:
        """Intervals around ``forecasts`` ``[n, horizon]`` (target units) of ``raw_windows``, at
        each of ``levels`` (percent, each in (0, 100))."""
        half = self.quantiles(levels)[None, :, :] * self.scales(raw_windows)[:, None, None]
        centre = np.asarray(forecasts, dtype=np.float64)[:, None, :]
        return ForecastIntervals(tuple(levels), centre - half, centre + half)


def score(
    conformal: Conformal,
    *,
    forecasts: np.ndarray,
    truth: np.ndarray,
    raw_windows: np.ndarray,
    levels: Sequence[float] = REPORTED_LEVELS,
) -> tuple[IntervalScore, ...]:
    """Coverage and mean width at each of ``levels`` over every window and horizon step."""
    bounds = conformal.bounds(forecasts, raw_windows, levels)
    return interval_scores(levels, bounds.lo, bounds.hi, truth)


def interval_scores(
    levels: Sequence[float], lo: np.ndarray, hi: np.ndarray, truth: np.ndarray
) -> tuple[IntervalScore, ...]:
    """Coverage and mean width of intervals ``lo``/``hi`` ``[n, L, horizon]`` (or ``[n, L]``) of
    outcomes ``truth`` ``[n, horizon]`` (or ``[n]``), per level."""
    y = np.asarray(truth, dtype=np.float64)[:, None, ...]
    inside = (lo <= y) & (y <= hi)
    axes = (0, *range(2, inside.ndim))
    coverage = inside.mean(axis=axes)
    width = (hi - lo).mean(axis=axes)
    return tuple(
        IntervalScore(level=float(level), coverage=float(c), mean_width=float(w))
        for level, c, w in zip(levels, coverage, width, strict=True)
    )
