"""``--window auto``: how much history the model sees, chosen from the seasons of the training
split.

The LSTM runs over ``steps`` rows, and every seasonal period found gets a lag channel (the
target one period back, see :mod:`training.transform`): the model sees at least one full cycle
of every period, without an LSTM as long as a week of half-hours, and the value at the same
phase of the last cycle sits beside each step (the strongest single predictor of seasonal data,
which an LSTM otherwise has to learn to find ``p`` steps back).

- With periods found (:func:`training.seasons.detect_periods`), the shortest one ``p`` sets
  ``steps = 2p`` (two cycles), within [16, 64] rows. A period longer than 64 rows is seen
  only through its lag.
- With none, the LSTM runs over 32 rows.
- Every split must still hold a whole window: lags too long for the validation or test split
  are dropped (longest first, and said so), then ``steps`` shrinks if it must.

The rows cost LSTM time linearly, which is what keeps default training within its budget on
a 2-core CPU; a lag channel costs one input, not ``p`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import Series, chronological_split, impute
from training.manifest import request_window

STEPS_MIN, STEPS_MAX, STEPS_WITHOUT_SEASONS = 16, 64, 32
STEPS_FLOOR = 4  # shrunk to fit short data, never below this


@dataclass(frozen=True)
class WindowChoice:
    steps: int  # rows the LSTM runs over
    lags: tuple[int, ...]  # seasonal lag channels
    periods: tuple[int, ...]  # seasonal periods found in the training split
    reason: str  # one line for the log and the manifest

    @property
    def window(self) -> int:
        """Rows a window holds (what clients send)."""
        return request_window(self.steps, self.lags)


def fixed_window(steps: int, periods: tuple[int, ...]) -> WindowChoice:
    """``--window N``: the LSTM runs over N rows, no lag channels."""
    return WindowChoice(steps, (), periods, f"--window {steps}")


def choose_window(periods: tuple[int, ...], *, shortest_split: int, horizon: int) -> WindowChoice:
    """The window for ``periods`` when the shortest split holds ``shortest_split`` rows."""
    first = min(periods) if periods else None
    if first is not None and first <= STEPS_MAX:
        steps = min(max(2 * first, STEPS_MIN), STEPS_MAX)
    else:
        steps = STEPS_WITHOUT_SEASONS
    lags = tuple(sorted(periods))
    notes: list[str] = []
    while lags and request_window(steps, lags) + horizon + 1 > shortest_split:
        notes.append(f"period {lags[-1]} is too long for a {shortest_split}-row split")
        lags = lags[:-1]
    if steps + horizon + 1 > shortest_split:
        shrunk = max(STEPS_FLOOR, shortest_split - horizon - 1)
        notes.append(f"{steps} steps shrunk to {shrunk} to fit a {shortest_split}-row split")
        steps = shrunk
    found = ", ".join(map(str, periods)) if periods else "none"
    seen = f"the LSTM sees {steps} rows"
    seen += "".join(f", and the target one period back at {p}" for p in lags)
    reason = f"seasonal periods found: {found}; {seen}; a window holds"
    reason += f" {request_window(steps, lags)} rows" + "".join(f"; {n}" for n in notes)
    return WindowChoice(steps, lags, tuple(periods), reason)


def training_target(series: Series, *, val_fraction: float, test_fraction: float) -> np.ndarray:
    """The imputed target of the training split, for finding its seasons."""
    split = chronological_split(
        len(series.values), val_fraction=val_fraction, test_fraction=test_fraction, min_rows=2
    )
    filled, _, _ = impute(series.values, split.train, series.feature_names)
    train: np.ndarray = filled[split.train[0] : split.train[1], series.target_index]
    return train


def shortest_split(series: Series, *, val_fraction: float, test_fraction: float) -> int:
    split = chronological_split(
        len(series.values), val_fraction=val_fraction, test_fraction=test_fraction, min_rows=1
    )
    return min(hi - lo for lo, hi in (split.train, split.val, split.test))
