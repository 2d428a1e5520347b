"""Baseline forecasters every model is compared with, scored on the same points as the model.

:func:`score_baselines` scores one-step forecasts, made at exactly the rows where the model's
first forecast step is scored, of:

- **persistence**: ``target[i-1]``;
- per detected period ``p``, **seasonal naive** ``target[i-p]`` and **persistence plus the
  seasonal change** ``target[i-1] + target[i-p] - target[i-1-p]``;
- the statsforecast models **AutoETS**, **AutoTheta**, **MSTL** (two or more periods) and
  **AutoARIMA** (where it fits the budget).

Every forecast for row ``i`` uses ``target[:i]`` only. The statistical models are fitted once,
on the training split (its last :data:`MAX_FIT_ROWS` rows at most, or four cycles of the longest
period if that is more), and then run forward over validation and test with their parameters
fixed ("rolling origin, refit off"). How each stays causal and cheap:

- AutoETS and AutoARIMA: ``forward(y, h=1, fitted=True)["fitted"]`` filters the series with
  the fitted parameters and initial states; its value at ``i`` is the forecast made from
  ``y[:i]`` (tested).
- AutoETS's own one-step prediction intervals at :data:`REPORTED_LEVELS` are scored too
  (coverage and mean width on the same points, next to the model's conformal intervals): at
  ``i`` those of ``forward(y[:i], h=1, level=...)``, computed in one pass
  (:func:`ets_one_step_bounds`; tested against that call).
- AutoTheta: ``forward`` is causal for the dynamic models (DSTM, DOTM) only. The standard and
  optimised Theta models (STM, OTM) fit their trend line to all the data they are given, so
  their in-sample values see the future. The forecast an STM/OTM model with fixed parameters
  makes from origin ``i`` equals the one-step value of its dynamic counterpart with the same
  parameters (the dynamic models update that line with the data up to each step; tested
  against per-origin forecasts), so that is what is run forward.
- Seasonality for AutoTheta, and for AutoETS beyond its limit of 24 seasons (statsforecast's
  ETS falls back to a non-seasonal model above it): both are fitted non-seasonal on the series
  divided by (or, for series that are not all positive, minus) the seasonal indices of a
  classical decomposition of the training split, repeated forward by the period. This is what
  statsforecast's AutoTheta does inside, except that its ``forward`` re-decomposes all the data
  it is given, future included. AutoETS with a season of at most 24 is seasonal itself.
- MSTL: ``forward`` re-decomposes with future data, and refitting at every step took 11 minutes
  on 600 points. Instead the seasonal components of the training decomposition are repeated
  forward by their periods (as MSTL forecasts them), and the trend forecaster (AutoETS, ZZN)
  fitted on the training split's seasonally adjusted series is run forward over the target minus
  those components.
- AutoARIMA: non-seasonal when no period was detected; seasonal only when the shortest period is
  at most :data:`ARIMA_MAX_SEASON`, on the last :data:`ARIMA_SEASONAL_MAX_ROWS` training rows
  (measured on this 2-core machine: season 12 on 2,000 points 11 s, on 4,000 points 43 s;
  season 24 on 700 points 32 s; season 52 on 1,600 weekly points did not finish in 300 s).
  Otherwise it is skipped, and ``skipped`` says why.

The budget: the simple baselines always run (microseconds). The statistical models run in the
order of :data:`STATISTICAL` (AutoARIMA, the least predictable, last), each only if the time
left in ``budget_seconds`` covers its expected cost (a fixed plus a per-row cost measured on
this 2-core machine); one that starts is finished. A model that fails or forecasts
non-finite values is skipped with the reason, never fatal to training.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from training.intervals import REPORTED_LEVELS, IntervalScore, interval_scores

log = logging.getLogger(__name__)

STATISTICAL = ("AutoETS", "AutoTheta", "MSTL", "AutoARIMA")
"""The fitted models, in the order they run."""
MAX_FIT_ROWS = 5000
"""Training rows the statistical models are fitted on at most (the most recent ones)."""
ETS_MAX_SEASON = 24
"""statsforecast's ETS has at most this many seasonal states."""
ARIMA_MAX_SEASON = 12
"""The longest season seasonal AutoARIMA runs with."""
ARIMA_SEASONAL_MAX_ROWS = 2000
"""Training rows seasonal AutoARIMA is fitted on at most."""
# Expected fitting cost, seconds plus seconds per fitted row, measured on a 2-core CPU (the
# worst series seen; seasonal AutoARIMA's stepwise search costs seconds even on 400 rows).
_COST = {
    "AutoETS": (0.5, 0.001),
    "AutoTheta": (0.5, 0.003),
    "MSTL": (0.5, 0.0005),
    "AutoARIMA": (1.0, 0.0006),
    "seasonal AutoARIMA": (8.0, 0.006),
}
_DYNAMIC_THETA = {"STM": "DSTM", "OTM": "DOTM"}


@dataclass(frozen=True, kw_only=True)
class BaselineScore:
    """One baseline's one-step mean absolute errors (target units) on the model's points."""

    name: str  # persistence, seasonal_naive, persistence_seasonal_change, AutoETS, ...
    period: int | None = None  # the seasonal period it used, if any
    statistical: bool  # a fitted statistical model (AutoETS, AutoTheta, MSTL, AutoARIMA)
    val_mae: float
    test_mae: float
    seconds: float  # fitting and scoring time
    note: str = ""  # how it was applied, where that is not the obvious (e.g. "ETS model AAdN")
    # Its own one-step prediction intervals at REPORTED_LEVELS on the same points (AutoETS):
    # coverage and mean width; empty for baselines without intervals.
    val_intervals: tuple[IntervalScore, ...] = ()
    test_intervals: tuple[IntervalScore, ...] = ()

    @property
    def label(self) -> str:
        """``name`` with its period, e.g. ``seasonal_naive(24)``."""
        return f"{self.name}({self.period})" if self.period else self.name

    def mae(self, split: str) -> float:
        """The MAE on ``"val"`` or ``"test"``."""
        return self.val_mae if split == "val" else self.test_mae


@dataclass(frozen=True, kw_only=True)
class Baselines:
    periods: tuple[int, ...]  # seasonal periods detected on the training split
    scores: tuple[BaselineScore, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)  # baseline -> why it did not run
    # Set by training: the model's one-step (first horizon step) MAE on the same points.
    model_val_mae: float | None = None
    model_test_mae: float | None = None
    # Set by training's guard: why the model does not beat persistence or seasonal naive on
    # validation (empty when it beats both), the likely causes, and whether it was published
    # anyway (--allow-worse-than-baselines, or --allow-collapsed for a collapsed model).
    guard_reasons: tuple[str, ...] = ()
    guard_causes: tuple[str, ...] = ()
    published_despite_baselines: bool = False

    def score(self, name: str, period: int | None = None) -> BaselineScore | None:
        """The score of baseline ``name`` (at ``period``), if it ran."""
        for s in self.scores:
            if s.name == name and s.period == period:
                return s
        return None

    @property
    def persistence(self) -> BaselineScore:
        found = self.score("persistence")
        if found is None:
            raise ValueError("no persistence score")
        return found

    def best_seasonal_naive(self, split: str = "val") -> BaselineScore | None:
        """The seasonal naive baseline with the lowest MAE on ``split``; None without periods."""
        return _lowest((s for s in self.scores if s.name == "seasonal_naive"), split)

    def best_statistical(self, split: str = "val") -> BaselineScore | None:
        """The fitted model with the lowest MAE on ``split``; None when none ran."""
        return _lowest((s for s in self.scores if s.statistical), split)

    def best(self, split: str = "val") -> BaselineScore:
        """The baseline with the lowest MAE on ``split``."""
        best = _lowest(self.scores, split)
        return best if best is not None else self.persistence


def _lowest(scores: Iterable[BaselineScore], split: str) -> BaselineScore | None:
    finite = [s for s in scores if np.isfinite(s.mae(split))]
    return min(finite, key=lambda s: s.mae(split)) if finite else None


def score_baselines(
    target: np.ndarray,
    train_end: int,
    points: Mapping[str, np.ndarray],
    periods: tuple[int, ...],
    *,
    budget_seconds: float = 60.0,
) -> Baselines:
    """Score every baseline's one-step forecasts at ``points["val"]`` and ``points["test"]``.

    ``target`` is the whole imputed target in time order (training rows first), ``train_end``
    the number of training rows, ``points`` the absolute rows at which the model's one-step
    forecasts are scored (each at or after ``train_end``), ``periods`` the seasonal periods of
    the training split (:func:`training.seasons.detect_periods`).
    """
    started = time.perf_counter()
    y = np.asarray(target, dtype=np.float64)
    rows = {split: np.asarray(points[split], dtype=np.int64) for split in ("val", "test")}
    _check_inputs(y, train_end, rows, periods)
    periods = tuple(sorted(set(periods)))

    def scored(
        name: str, period: int | None, forecast: Callable[[np.ndarray], np.ndarray]
    ) -> BaselineScore:
        t0 = time.perf_counter()
        maes = {s: float(np.mean(np.abs(forecast(r) - y[r]))) for s, r in rows.items()}
        return BaselineScore(
            name=name,
            period=period,
            statistical=False,
            val_mae=maes["val"],
            test_mae=maes["test"],
            seconds=round(time.perf_counter() - t0, 4),
        )

    def seasonal_naive(p: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda r: y[r - p]

    def seasonal_change(p: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda r: y[r - 1] + y[r - p] - y[r - 1 - p]

    scores = [scored("persistence", None, lambda r: y[r - 1])]
    scores += [scored("seasonal_naive", p, seasonal_naive(p)) for p in periods]
    scores += [scored("persistence_seasonal_change", p, seasonal_change(p)) for p in periods]

    skipped: dict[str, str] = {}
    end = int(max(r.max() for r in rows.values())) + 1
    fitting = _Fitting(y=y[:end], train_end=train_end, periods=periods)
    for name in STATISTICAL:
        plan = fitting.plan(name)
        if isinstance(plan, str):
            skipped[name] = plan
            continue
        spent = time.perf_counter() - started
        expected = plan.expected_seconds
        if spent + expected > budget_seconds:
            skipped[name] = (
                f"over the budget: {spent:.1f} s of the {budget_seconds:g} s for baselines were "
                f"spent, and it needs about {expected:.0f} s on {plan.fit_rows} rows"
            )
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # statsforecast's optimisers and statsmodels' decompositions warn on
                # ill-conditioned fits; the scores below are checked for finiteness instead.
                warnings.simplefilter("ignore")
                one_step, note, bounds = plan.run()
        except Exception as exc:  # noqa: BLE001 - a baseline must never break training
            log.warning("baseline %s failed: %s: %s", name, type(exc).__name__, exc)
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        maes = {s: float(np.mean(np.abs(one_step[r] - y[r]))) for s, r in rows.items()}
        if not all(np.isfinite(v) for v in maes.values()):
            skipped[name] = "its forecasts were not finite"
            continue
        coverage = {s: _interval_scores(bounds, r, y) for s, r in rows.items()}
        scores.append(
            BaselineScore(
                name=name,
                period=plan.period,
                statistical=True,
                val_mae=maes["val"],
                test_mae=maes["test"],
                seconds=round(time.perf_counter() - t0, 3),
                note=note,
                val_intervals=coverage["val"],
                test_intervals=coverage["test"],
            )
        )
    log.info(
        "baselines: %d scored in %.1fs (periods %s)%s",
        len(scores),
        time.perf_counter() - started,
        ", ".join(map(str, periods)) or "none",
        "; skipped " + ", ".join(skipped) if skipped else "",
    )
    return Baselines(periods=periods, scores=tuple(scores), skipped=skipped)


def _check_inputs(
    y: np.ndarray, train_end: int, rows: Mapping[str, np.ndarray], periods: tuple[int, ...]
) -> None:
    if y.ndim != 1 or not np.all(np.isfinite(y)):
        raise ValueError("target must be a 1-d array of finite (imputed) values")
    if not 0 < train_end <= len(y):
        raise ValueError(f"train_end {train_end} outside 1..{len(y)}")
    for split, r in rows.items():
        if len(r) == 0:
            raise ValueError(f"no {split} points")
        if r.min() < train_end or r.max() >= len(y):
            raise ValueError(f"{split} points must lie in [{train_end}, {len(y)})")
    if any(p < 2 or 2 * p > train_end for p in periods):
        raise ValueError(f"periods {periods} must be >= 2 with two cycles in the training split")


class _Bounds(NamedTuple):
    """One-step prediction intervals for every row of the series, ``[rows, levels]`` each (NaN
    where there is none), at :data:`REPORTED_LEVELS`."""

    lo: np.ndarray
    hi: np.ndarray


class _Forecasts(NamedTuple):
    one_step: np.ndarray  # for every row of the series (NaN where there is none)
    note: str  # how the model was applied
    bounds: _Bounds | None = None  # its own intervals, for models that give them


def _interval_scores(
    bounds: _Bounds | None, rows: np.ndarray, y: np.ndarray
) -> tuple[IntervalScore, ...]:
    if bounds is None:
        return ()
    return interval_scores(REPORTED_LEVELS, bounds.lo[rows], bounds.hi[rows], y[rows])


@dataclass(frozen=True)
class _Plan:
    """A statistical baseline ready to run: ``run`` returns its one-step forecasts, a note on
    how it was applied, and its intervals where it gives them."""

    period: int | None
    fit_rows: int
    expected_seconds: float
    run: Callable[[], _Forecasts]


@dataclass(frozen=True)
class _Fitting:
    """The series up to the last scored row, and how each statistical model is fitted on it."""

    y: np.ndarray
    train_end: int
    periods: tuple[int, ...]

    @property
    def shortest(self) -> int | None:
        return self.periods[0] if self.periods else None

    def fit_start(self, max_rows: int) -> int:
        """The first row of the fit window: the last ``max_rows`` training rows, widened to four
        cycles of the longest period when that is more."""
        cycles = 4 * self.periods[-1] if self.periods else 0
        return max(0, self.train_end - max(max_rows, cycles))

    def plan(self, name: str) -> _Plan | str:
        """How to run baseline ``name``, or why it does not run."""
        start = self.fit_start(MAX_FIT_ROWS)
        rows = self.train_end - start
        period = self.shortest
        if name == "AutoETS":
            return _Plan(period, rows, _cost(name, rows), lambda: self._ets(start))
        if name == "AutoTheta":
            return _Plan(period, rows, _cost(name, rows), lambda: self._theta(start))
        if name == "MSTL":
            if len(self.periods) < 2:
                return "MSTL needs two or more seasonal periods" + (
                    f"; one was detected ({period})" if period else "; none was detected"
                )
            return _Plan(None, rows, _cost(name, rows), lambda: self._mstl(start))
        if name == "AutoARIMA":
            if period is None:
                cost = _cost(name, rows)
                return _Plan(None, rows, cost, lambda: self._arima(start, 1))
            if period > ARIMA_MAX_SEASON:
                return (
                    f"seasonal AutoARIMA with season {period} > {ARIMA_MAX_SEASON} does not fit "
                    "the budget (measured: season 24 on 700 points 32 s, season 52 on 1,600 "
                    "points over 300 s), and a non-seasonal one would ignore the season"
                )
            start = self.fit_start(ARIMA_SEASONAL_MAX_ROWS)
            rows = self.train_end - start
            cost = _cost("seasonal AutoARIMA", rows)
            return _Plan(period, rows, cost, lambda: self._arima(start, period))
        raise ValueError(f"unknown baseline {name!r}")

    def _ets(self, start: int) -> _Forecasts:
        from statsforecast.models import AutoETS

        period = self.shortest
        if period is not None and period > ETS_MAX_SEASON:
            season = _Season.fit(self.y[start : self.train_end], period)
            adjusted = season.adjust(self.y[start:])
            fitted = AutoETS(season_length=1).fit(adjusted[: self.train_end - start])
            adjusted_step = _fitted(fitted, adjusted)
            one_step = season.restore(adjusted_step)
            lo, hi = ets_one_step_bounds(fitted.model_, adjusted, adjusted_step, REPORTED_LEVELS)
            # The season is positive where multiplicative, so the bounds keep their order.
            lo, hi = season.restore_columns(lo), season.restore_columns(hi)
            note = (
                f"ETS {fitted.model_['components']} on the series {season.kind}ly "
                f"deseasonalised at {period} (ETS has at most {ETS_MAX_SEASON} seasons)"
            )
        else:
            fitted = AutoETS(season_length=period or 1).fit(self.y[start : self.train_end])
            one_step = _fitted(fitted, self.y[start:])
            lo, hi = ets_one_step_bounds(fitted.model_, self.y[start:], one_step, REPORTED_LEVELS)
            note = f"ETS {fitted.model_['components']}"
        bounds = _Bounds(_padded(lo, start), _padded(hi, start))
        return _Forecasts(_padded(one_step, start), note, bounds)

    def _theta(self, start: int) -> _Forecasts:
        from statsforecast.models import AutoTheta

        period = self.shortest
        season = _Season.fit(self.y[start : self.train_end], period) if period else None
        series = season.adjust(self.y[start:]) if season else self.y[start:]
        model = AutoTheta(season_length=1).fit(series[: self.train_end - start])
        chosen = str(model.model_["modeltype"])
        # STM/OTM fit their trend line to all the data they are given; their causal rolling
        # forecasts are the one-step values of the dynamic models with the same parameters.
        dynamic = _DYNAMIC_THETA.get(chosen, chosen)
        rolling = copy.copy(model)
        rolling.model_ = {**model.model_, "modeltype": dynamic}
        one_step = _fitted(rolling, series)
        note = f"Theta {chosen}" + (f" (rolled forward as {dynamic})" if dynamic != chosen else "")
        if season is not None:
            one_step = season.restore(one_step)
            note += f" on the series {season.kind}ly deseasonalised at {period}"
        return _Forecasts(_padded(one_step, start), note)

    def _mstl(self, start: int) -> _Forecasts:
        from statsforecast.models import MSTL

        train = self.y[start : self.train_end]
        model = MSTL(season_length=list(self.periods)).fit(train)
        decomposition = model.model_
        seasonal = np.zeros(len(self.y) - start)
        for p in self.periods:
            component = decomposition[f"seasonal{p}"].to_numpy(dtype=np.float64)
            # Training rows keep their decomposition; later rows repeat its last cycle.
            future = np.arange(len(seasonal) - len(train))
            seasonal += np.concatenate([component, component[len(train) - p + future % p]])
        adjusted = self.y[start:] - seasonal
        one_step = _fitted(model.trend_forecaster, adjusted) + seasonal
        note = (
            f"seasons {' and '.join(map(str, self.periods))} from the training decomposition, "
            f"trend ETS {model.trend_forecaster.model_['components']} run forward"
        )
        return _Forecasts(_padded(one_step, start), note)

    def _arima(self, start: int, season: int) -> _Forecasts:
        from statsforecast.models import AutoARIMA

        model = AutoARIMA(season_length=season).fit(self.y[start : self.train_end])
        p, q, sp, sq, m, d, sd = (int(v) for v in model.model_["arma"])
        order = f"ARIMA({p},{d},{q})" + (f"({sp},{sd},{sq})[{m}]" if m > 1 else "")
        rows = self.train_end - start
        return _Forecasts(_padded(_fitted(model, self.y[start:]), start), f"{order} on {rows} rows")


@dataclass(frozen=True)
class _Season:
    """Seasonal indices of a classical decomposition of the fit window, repeated forward."""

    indices: np.ndarray  # one cycle, phase 0 at the fit window's first row
    kind: str  # "multiplicative" or "additive"

    @classmethod
    def fit(cls, train: np.ndarray, period: int) -> _Season:
        from statsmodels.tsa.seasonal import (  # type: ignore[import-untyped, unused-ignore]
            seasonal_decompose,
        )

        # As statsforecast's AutoTheta: multiplicative for positive data, unless an index is
        # near zero.
        if train.min() > 0:
            seasonal = seasonal_decompose(train, model="multiplicative", period=period).seasonal
            if np.min(seasonal) >= 0.01:
                return cls(np.asarray(seasonal[:period], dtype=np.float64), "multiplicative")
        seasonal = seasonal_decompose(train, model="additive", period=period).seasonal
        return cls(np.asarray(seasonal[:period], dtype=np.float64), "additive")

    def at(self, n: int) -> np.ndarray:
        """The indices of ``n`` rows from the fit window's first."""
        return np.asarray(np.resize(self.indices, n), dtype=np.float64)

    def adjust(self, y: np.ndarray) -> np.ndarray:
        """``y`` (rows from the fit window's first) without the season."""
        s = self.at(len(y))
        return np.asarray(y / s if self.kind == "multiplicative" else y - s, dtype=np.float64)

    def restore(self, adjusted: np.ndarray) -> np.ndarray:
        """Seasonally adjusted values (rows from the fit window's first) with the season."""
        s = self.at(len(adjusted))
        restored = adjusted * s if self.kind == "multiplicative" else adjusted + s
        return np.asarray(restored, dtype=np.float64)

    def restore_columns(self, adjusted: np.ndarray) -> np.ndarray:
        """:meth:`restore` for each column of ``[rows, k]``."""
        return np.stack([self.restore(column) for column in adjusted.T], axis=1)


def _cost(name: str, rows: int) -> float:
    base, per_row = _COST[name]
    return base + per_row * rows


def _fitted(model: Any, y: np.ndarray) -> np.ndarray:
    """One-step forecasts of a fitted statsforecast model run forward over ``y`` with its
    parameters fixed: element ``i`` is the forecast made from ``y[:i]``."""
    result = model.forward(y=y, h=1, fitted=True)
    return np.asarray(result["fitted"], dtype=np.float64)


def ets_one_step_bounds(
    model: Mapping[str, Any], y: np.ndarray, one_step: np.ndarray, levels: Iterable[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Causal one-step prediction intervals ``[rows, levels]`` of a fitted statsforecast ETS
    model (``AutoETS.model_``) run forward over ``y`` with one-step forecasts ``one_step``.

    Row ``i`` holds what ``forward(y[:i], h=1, level=levels)`` returns: the parameters fitted on
    the training split, and the variance of the model's one-step errors on ``y[:i]`` (statsforecast
    re-estimates it from the data it is given, the past only). ``forward(y, fitted=True,
    level=...)`` is not causal (its in-sample intervals take their variance from every row,
    future ones included), and one ``forward`` call per origin would cost quadratic time, so
    the same arithmetic is done here in one pass (tested against the per-origin call). One step
    ahead every ETS class has a closed form: ``f -/+ z sigma`` for additive errors and
    ``f -/+ z sigma |f|`` for multiplicative ones (statsforecast simulates the classes without
    one, which agrees up to its Monte Carlo noise)."""
    additive = str(model["components"])[0] == "A"
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        errors = y - one_step if additive else y / one_step - 1
        squared = errors**2
    squared = np.where(np.isfinite(squared), squared, 0.0)  # as statsforecast: inf excluded
    before = np.concatenate([[0.0], np.cumsum(squared)[:-1]])  # errors of rows < i
    dof = np.arange(len(y)) - float(model["n_params"]) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.sqrt(np.where(dof > 0, before / dof, np.nan))
    sd = sigma if additive else sigma * np.abs(one_step)
    z = np.array([NormalDist().inv_cdf(0.5 + level / 200) for level in levels])
    return one_step[:, None] - z * sd[:, None], one_step[:, None] + z * sd[:, None]


def _padded(values: np.ndarray, start: int) -> np.ndarray:
    """Values for the rows from ``start`` (``[rows]`` or ``[rows, k]``) as values for every row
    (NaN before it)."""
    return np.concatenate([np.full((start, *values.shape[1:]), np.nan), values])
