"""Seasonal periods of a series: calendar cycles its time step implies, confirmed by the
autocorrelation of the training split, or else its strongest autocorrelation peak.

Method (:func:`detect_periods`):

1. Missing values are carried forward (leading ones take the first observed value), as the
   training data are imputed; the series is then detrended by removing its least-squares line,
   so that a trend does not make every lag look alike. Its autocorrelation function (ACF) is
   computed by FFT, O(n log n).
2. **Calendar candidates** come from the step (:func:`calendar_candidates`): a day and a week
   of sub-daily steps (hourly: 24 and 168; half-hourly: 48 and 336; 15-minute: 96 and 672), a
   week and a year of daily steps (7 and 365), a year of weekly, monthly and quarterly steps
   (52, 12, 4). A candidate ``p`` is kept when at least :data:`MIN_CYCLES` cycles fit in the
   training split and the ACF confirms it: a local ACF maximum within :data:`LAG_TOLERANCE` of
   ``p`` that reaches :data:`MIN_ACF` and the 99% bound of chance ACF at long lags of a
   persistent (AR(1)) series of that length, and stands at least :data:`MIN_PROMINENCE` above
   the trough before it. A candidate that is a
   multiple of a shorter confirmed one (a week of hours is 7 days) must in addition beat the
   ACF one shorter cycle either side of it by :data:`NESTED_MARGIN` (lag 168 against 144 and
   192): every daily series peaks at lag 168, only a weekly pattern lifts it above its
   neighbours.
3. **Otherwise the strongest peak.** With no calendar period confirmed (or no calendar step),
   the highest ACF peak with at least two cycles in the split is taken (the ~11-year sunspot
   cycle in monthly data) when it is clear: ACF at least :data:`FALLBACK_MIN_ACF`, prominence at
   least :data:`FALLBACK_MIN_PROMINENCE`, and above Bartlett's 99% bound given the lags before
   it. Searching every lag is a multiple comparison, and a detrended random walk has slow ACF
   swings of a few hundred lags; Bartlett's bound grows with the autocorrelation before the peak
   and refuses those.

White noise and random walks give no period (see ``tests/test_training_seasons.py``).
Periods in sub-daily data longer than a week (a year of hours) are not candidates: two cycles
are rarely in the data, and a season that long is no use to a window or a seasonal baseline.
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy.signal import (  # type: ignore[import-untyped, unused-ignore]
    find_peaks,
    peak_prominences,
)
from statsmodels.tsa.stattools import acf  # type: ignore[import-untyped, unused-ignore]

MIN_CYCLES = 2
"""Full cycles of a period that must fit in the training split."""
MIN_ACF = 0.15
"""The ACF a calendar period must reach at its peak."""
MIN_PROMINENCE = 0.1
"""How far a calendar period's ACF peak must rise above the trough before it."""
NESTED_MARGIN = 0.02
"""How far a nested calendar period's ACF must exceed the ACF one shorter cycle either side."""
LAG_TOLERANCE = 0.02
"""The peak may lie this share of the period from it (at least one lag): a year is not a
whole number of weeks, nor always exactly 365 days of weather."""
FALLBACK_MIN_ACF = 0.25
"""The ACF a non-calendar peak must reach."""
FALLBACK_MIN_PROMINENCE = 0.2
"""How far a non-calendar peak must rise above its surrounding troughs."""
BARTLETT_Z = 2.576
"""The 99% normal quantile of the significance bounds."""
PERSISTENCE_CAP = 0.9
"""The lag-1 autocorrelation at which a calendar period's significance bound stops growing.
Smooth seasonal series have a lag-1 ACF above 0.9 from their cycle alone (all the real series
in the tests do), and an uncapped AR(1) bound would refuse their seasons."""

_DAY = 86_400
_WEEK = 7 * _DAY
_YEAR = 365.25 * _DAY
_DURATION = re.compile(
    r"^P(?:(?P<Y>\d+)Y)?(?:(?P<Mo>\d+)M)?(?:(?P<W>\d+)W)?(?:(?P<D>\d+)D)?"
    r"(?:T(?:(?P<H>\d+)H)?(?:(?P<Mi>\d+)M)?(?:(?P<S>\d+(?:\.\d+)?)S)?)?$"
)


def detect_periods(y_train: np.ndarray, step: str | None) -> tuple[int, ...]:
    """The seasonal periods, in steps and ascending, of the training-split target ``y_train``.

    ``step`` is the series' time step as an ISO-8601 duration (``"PT1H"``, ``"P1D"``,
    ``"P1M"``), an integer step (``"1"``) or None; only durations give calendar candidates.
    NaNs are carried forward. Returns ``()`` when no period is clear.
    """
    y = _forward_filled(np.asarray(y_train, dtype=np.float64))
    n = len(y)
    if n < 2 * MIN_CYCLES or np.ptp(y) == 0:
        return ()
    t = np.arange(n, dtype=np.float64)
    detrended = y - np.polyval(np.polyfit(t, y, 1), t)
    if not np.any(np.abs(detrended) > 1e-12 * max(1.0, float(np.abs(y).max()))):
        return ()
    r = np.asarray(acf(detrended, nlags=max(2, (3 * n) // 4), fft=True), dtype=np.float64)
    peaks, _ = find_peaks(r)
    confirmed: list[int] = []
    for period in calendar_candidates(step):
        if MIN_CYCLES * period <= n and _confirms(r, peaks, period, confirmed, n):
            confirmed.append(period)
    if confirmed:
        return tuple(sorted(confirmed))
    strongest = _strongest_peak(r, n)
    return (strongest,) if strongest is not None else ()


def calendar_candidates(step: str | None) -> tuple[int, ...]:
    """The calendar cycles, in steps, that a time step implies (ascending; may be empty)."""
    parsed = _parse_step(step)
    if parsed is None:
        return ()
    months, seconds = parsed
    candidates: set[int] = set()
    if months and not seconds:
        if 12 % months == 0 and 12 // months >= 2:
            candidates.add(12 // months)
    elif seconds and not months:
        for cycle in (_DAY, _WEEK):
            steps = cycle / seconds
            if steps >= 2 and math.isclose(steps, round(steps)):
                candidates.add(round(steps))
        if seconds >= _DAY and round(_YEAR / seconds) >= 2:
            candidates.add(round(_YEAR / seconds))
    return tuple(sorted(candidates))


def _parse_step(step: str | None) -> tuple[int, float] | None:
    """``(months, seconds)`` of an ISO-8601 duration; None for None, integers or anything else."""
    if step is None:
        return None
    match = _DURATION.fullmatch(step.strip().upper())
    if match is None:
        return None
    part = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    months = int(part["Y"] * 12 + part["Mo"])
    seconds = part["W"] * _WEEK + part["D"] * _DAY + part["H"] * 3600 + part["Mi"] * 60 + part["S"]
    if months == 0 and seconds <= 0:
        return None
    return months, seconds


def _forward_filled(y: np.ndarray) -> np.ndarray:
    """NaNs carried forward; leading NaNs take the first observed value (empty if none is)."""
    observed = ~np.isnan(y)
    if not observed.any():
        return np.empty(0)
    index = np.where(observed, np.arange(len(y)), -1)
    np.maximum.accumulate(index, out=index)
    filled = y[np.maximum(index, 0)]
    filled[index < 0] = y[observed][0]
    return filled


def _confirms(r: np.ndarray, peaks: np.ndarray, period: int, shorter: list[int], n: int) -> bool:
    """Whether the ACF ``r`` confirms calendar period ``period`` (see the module docstring)."""
    tolerance = max(1, round(LAG_TOLERANCE * period))
    near = peaks[np.abs(peaks - period) <= tolerance]
    if len(near) == 0:
        return False
    lag = int(near[np.argmax(r[near])])
    if r[lag] < max(MIN_ACF, _persistence_bound(r, n)):
        return False
    (prominence,) = peak_prominences(r, [lag])[0]
    if prominence < MIN_PROMINENCE:
        return False
    for cycle in shorter:
        if period % cycle == 0:
            either_side = [r[lag - cycle]] + ([r[lag + cycle]] if lag + cycle < len(r) else [])
            if r[lag] - max(either_side) < NESTED_MARGIN:
                return False
    return True


def _persistence_bound(r: np.ndarray, n: int) -> float:
    """The 99% bound of the sample ACF at long lags of an AR(1) process with the series' lag-1
    autocorrelation ``phi`` (Bartlett: variance ``(1 + phi^2) / (1 - phi^2) / n``), with ``phi``
    capped at :data:`PERSISTENCE_CAP`."""
    phi = min(max(float(r[1]), 0.0), PERSISTENCE_CAP)
    return BARTLETT_Z * math.sqrt((1 + phi**2) / (1 - phi**2) / n)


def _strongest_peak(r: np.ndarray, n: int) -> int | None:
    """The lag of the highest clear ACF peak with two cycles in the data; None if none is."""
    peaks, props = find_peaks(r, height=FALLBACK_MIN_ACF, prominence=FALLBACK_MIN_PROMINENCE)
    # Bartlett's variance of r[k] under "no autocorrelation beyond lag k-1".
    bound = BARTLETT_Z * np.sqrt((1.0 + 2.0 * np.cumsum(r[1:] ** 2)) / n)  # bound[k-2]: lag k
    clear = [int(k) for k in peaks if 2 <= k and MIN_CYCLES * k <= n and r[k] > bound[k - 2]]
    if not clear:
        return None
    return max(clear, key=lambda k: r[k])
