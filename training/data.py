"""Input data: the built-in synthetic series, CSV loading, imputation and the chronological split.

Everything here works on a plain ``[rows, features]`` float64 matrix in time order. Nothing in
this module looks at more than the training split when it estimates a statistic.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A user-facing problem with the input data; the message is one line and names the culprit."""


@dataclass(frozen=True)
class Series:
    """A multivariate series in time order. ``values`` may contain NaN for missing readings."""

    values: np.ndarray  # float64, [rows, features]
    feature_names: tuple[str, ...]
    target: str
    timestamps: tuple[str, ...] | None = None

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
    return Series(values=values, feature_names=SYNTHETIC_FEATURES, target="load")


def _ar1(rng: np.random.Generator, n: int, *, phi: float, sigma: float) -> np.ndarray:
    shocks = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + shocks[i]
        out[i] = acc
    return out


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def load_csv(
    path: str | Path,
    target: str,
    features: list[str] | None = None,
    time_column: str | None = None,
) -> Series:
    """Read a CSV with a header row.

    The target is always an input feature too (the model is autoregressive), and comes first
    unless ``features`` places it elsewhere. Without ``features``, every column except the time
    column is used. Empty cells are missing values. Rows are sorted by ``time_column`` when given.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data: no such file: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"--data: cannot read {path}: {exc}") from None
    if not rows or not rows[0]:
        raise DataError(f"--data: {path} is empty")
    header = [name.strip() for name in rows[0]]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if len(set(header)) != len(header):
        raise DataError(f"--data: {path} has duplicate column names")
    wanted = [time_column] if time_column else []
    names = list(features) if features else [h for h in header if h != time_column]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(f"--features lists column(s) more than once: {', '.join(duplicated)}")
    if target not in names:
        names.insert(0, target)
    missing = [n for n in [*wanted, *names] if n not in header]
    if missing:
        raise DataError(
            f"--data: column(s) not in {path.name}: {', '.join(missing)} "
            f"(available: {', '.join(header)})"
        )
    if time_column and time_column in names:
        raise DataError(f"--time-column {time_column} cannot also be a feature")

    columns: dict[str, list[str]] = {h: [] for h in header}
    for lineno, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"--data: line {lineno} of {path.name} has {len(row)} fields, "
                f"expected {len(header)}"
            )
        for h, cell in zip(header, row, strict=True):
            columns[h].append(cell.strip())

    parsed: list[np.ndarray] = []
    non_numeric: list[str] = []
    empty: list[str] = []
    for name in names:
        col = _parse_numeric(columns[name])
        if col is None:
            non_numeric.append(name)
        elif np.isnan(col).all():
            empty.append(name)
        else:
            parsed.append(col)
    problems = []
    if non_numeric:
        problems.append(f"non-numeric column(s): {', '.join(non_numeric)}")
    if empty:
        problems.append(f"entirely empty column(s): {', '.join(empty)}")
    if problems:
        raise DataError(f"--data: {'; '.join(problems)} (choose numeric inputs with --features)")

    values = np.column_stack(parsed) if parsed else np.empty((0, len(names)))
    timestamps = None
    if time_column:
        stamps = columns[time_column]
        order = np.argsort(_epoch_seconds(stamps, time_column), kind="stable")
        values = values[order]
        timestamps = tuple(stamps[i] for i in order)
    return Series(values=values, feature_names=tuple(names), target=target, timestamps=timestamps)


def _epoch_seconds(stamps: list[str], column: str) -> np.ndarray:
    """ISO-8601 timestamps -> seconds since the epoch; naive times are taken as UTC."""
    out = np.empty(len(stamps))
    for i, stamp in enumerate(stamps):
        try:
            moment = datetime.fromisoformat(stamp)
        except ValueError:
            what = "is empty" if not stamp else f"{stamp!r} is not an ISO-8601 timestamp"
            raise DataError(f"--time-column {column}: data row {i + 1} {what}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        out[i] = moment.timestamp()
    return out


def _parse_numeric(cells: list[str]) -> np.ndarray | None:
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        if cell == "" or cell.lower() in {"nan", "na", "null"}:
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            return None
    if np.isinf(out).any():
        return None
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
    n_test = int(round(n_rows * test_fraction))
    n_val = int(round(n_rows * val_fraction))
    n_train = n_rows - n_val - n_test
    split = Split(
        train=(0, n_train), val=(n_train, n_train + n_val), test=(n_train + n_val, n_rows)
    )
    for name, (lo, hi) in (("train", split.train), ("validation", split.val), ("test", split.test)):
        if hi - lo < min_rows:
            raise DataError(
                f"the {name} split has {hi - lo} rows but needs at least {min_rows} "
                f"(window + horizon + 1); supply more data or shrink --window/--horizon"
            )
    return split


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
