"""Input data: the series type, the built-in synthetic series, imputation and the chronological
split (CSV files are read by :mod:`training.table`).

Everything here works on a plain ``[rows, features]`` float64 matrix in time order. Nothing in
this module looks at more than the training split when it estimates a statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.errors import DataError as DataError
from training.timeaxis import TimeAxis


@dataclass(frozen=True)
class Series:
    """A multivariate series in time order. ``values`` may contain NaN for missing readings."""

    values: np.ndarray  # float64, [rows, features]
    feature_names: tuple[str, ...]
    target: str
    timestamps: tuple[str, ...] | None = None  # per row; "" where the grid had no row
    time: TimeAxis | None = None  # the time column and its step, when there is one
    dropped: tuple[tuple[str, str], ...] = ()  # (column, why it is not an input)
    features_named: bool = False  # the inputs were chosen with --features
    monotonic_inputs: tuple[str, ...] = ()  # inputs kept although they rise or fall strictly

    @property
    def target_index(self) -> int:
        return self.feature_names.index(self.target)


@dataclass(frozen=True)
class Split:
    """Row ranges of the chronological train / validation / test split (end-exclusive)."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]


# --------------------------------------------------------------------------------------------
# Built-in dataset
# --------------------------------------------------------------------------------------------

SYNTHETIC_FEATURES = ("load", "temperature", "hour_sin", "hour_cos", "weekend")


def synthetic_series(
    n_steps: int = 6000, *, seed: int = 7, base_level: float = 20_000.0, missing: float = 0.004
) -> Series:
    """A deterministic hourly electricity-load-like series.

    ``load`` (the target, tens of thousands of units) has daily and weekly seasonality, a slow
    upward trend (+35% over the series, so the test period lies partly above anything seen in
    training), a temperature response, and AR(1) noise. ``temperature`` is a correlated exogenous
    feature with its own daily and annual cycle. The calendar features are exact. About
    ``missing`` of the load and temperature readings are removed at random.
    """
    if n_steps < 100:
        raise DataError(f"synthetic series needs at least 100 steps, got {n_steps}")
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps, dtype=np.float64)
    hour = t % 24
    day = t // 24
    weekend = ((day % 7) >= 5).astype(np.float64)

    temp_noise = _ar1(rng, n_steps, phi=0.9, sigma=0.8)
    temperature = (
        14.0
        + 9.0 * np.sin(2 * math.pi * (day - 100) / 365.0)
        + 4.0 * np.sin(2 * math.pi * (hour - 9) / 24.0)
        + temp_noise
    )

    daily = 0.18 * np.sin(2 * math.pi * (hour - 8) / 24.0) + 0.07 * np.sin(
        4 * math.pi * (hour - 5) / 24.0
    )
    weekly = -0.12 * weekend
    trend = 0.35 * t / n_steps
    weather = 0.012 * np.abs(temperature - 17.0)
    noise = _ar1(rng, n_steps, phi=0.7, sigma=0.015)
    load = base_level * (1.0 + trend + daily + weekly + weather + noise)

    values = np.column_stack(
        [
            load,
            temperature,
            np.sin(2 * math.pi * hour / 24.0),
            np.cos(2 * math.pi * hour / 24.0),
            weekend,
        ]
    )
    for col in (0, 1):
        holes = rng.random(n_steps) < missing
        holes[0] = False
        values[holes, col] = np.nan
    hourly = TimeAxis("", "datetime", "PT1H", "the built-in hourly series", "", 0)
    return Series(values=values, feature_names=SYNTHETIC_FEATURES, target="load", time=hourly)


def _ar1(rng: np.random.Generator, n: int, *, phi: float, sigma: float) -> np.ndarray:
    shocks = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + shocks[i]
        out[i] = acc
    return out


# --------------------------------------------------------------------------------------------
# Split and imputation
# --------------------------------------------------------------------------------------------


def chronological_split(
    n_rows: int, *, val_fraction: float, test_fraction: float, min_rows: int
) -> Split:
    """Split rows in time order; nothing is shuffled. Each part must hold ``min_rows`` rows."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("--val-fraction and --test-fraction must be in (0, 1) and sum below 1")
    split = _split(n_rows, val_fraction, test_fraction)
    for name, (lo, hi) in (("train", split.train), ("validation", split.val), ("test", split.test)):
        if hi - lo < min_rows:
            needed = _rows_needed(val_fraction, test_fraction, min_rows)
            raise DataError(
                f"{n_rows} rows are too few: the {name} split has {hi - lo} rows but needs at "
                f"least {min_rows} (window + horizon + 1), so at least {needed} rows are needed "
                "with these split fractions; supply more data or shrink --window/--horizon"
            )
    return split


def _split(n_rows: int, val_fraction: float, test_fraction: float) -> Split:
    n_test = int(round(n_rows * test_fraction))
    n_val = int(round(n_rows * val_fraction))
    n_train = n_rows - n_val - n_test
    return Split(train=(0, n_train), val=(n_train, n_train + n_val), test=(n_train + n_val, n_rows))


def _rows_needed(val_fraction: float, test_fraction: float, min_rows: int) -> int:
    """The fewest rows whose chronological split gives every part ``min_rows`` rows."""
    n = 3 * min_rows
    while True:
        split = _split(n, val_fraction, test_fraction)
        if min(hi - lo for lo, hi in (split.train, split.val, split.test)) >= min_rows:
            return n
        n += 1


def impute(
    values: np.ndarray, train_rows: tuple[int, int], feature_names: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fill missing values causally, using training-split statistics only.

    Method: carry the last observed value forward (it only ever looks at earlier rows, so it
    cannot leak the future, and it is what a live feed would do); a value with no earlier
    observation takes its column's training-split mean. Returns the filled matrix, the training
    means used, and how many cells were filled.
    """
    lo, hi = train_rows
    train = values[lo:hi]
    names = feature_names or tuple(str(i) for i in range(values.shape[1]))
    all_missing = [names[i] for i in range(values.shape[1]) if np.isnan(train[:, i]).all()]
    if all_missing:
        raise DataError(f"column(s) {', '.join(all_missing)} have no values in the training split")
    means = np.nanmean(train, axis=0)
    filled = values.copy()
    n_missing = int(np.isnan(filled).sum())
    for col in range(filled.shape[1]):
        column = filled[:, col]
        holes = np.isnan(column)
        if not holes.any():
            continue
        idx = np.where(~holes, np.arange(len(column)), -1)
        np.maximum.accumulate(idx, out=idx)
        carried = np.where(idx >= 0, column[np.maximum(idx, 0)], means[col])
        filled[:, col] = carried
    return filled, means, n_missing
