"""Split, impute, scale and window a series, with statistics from the training split only."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from training.data import Series, chronological_split, impute
from training.errors import DataError
from training.transform import WindowTransform, fit_scaler


@dataclass(frozen=True)
class Prepared:
    series: Series
    transform: WindowTransform
    splits: dict[str, np.ndarray]  # imputed raw rows per split
    pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    n_imputed: int
    train_means: np.ndarray


def prepare(
    series: Series,
    *,
    val_fraction: float,
    test_fraction: float,
    window: int,
    horizon: int,
    target_mode: str = "delta",
    scaling: bool = True,
) -> Prepared:
    """Split, keep the usable columns, impute and scale with training statistics only, then
    window each split."""
    split = chronological_split(
        len(series.values),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_rows=window + horizon + 1,
    )
    series = usable_columns(series, split.train)
    filled, means, n_imputed = impute(series.values, split.train, series.feature_names)
    rows = {
        name: filled[lo:hi]
        for name, (lo, hi) in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    scaler = fit_scaler(rows["train"], scaling=scaling)
    transform = WindowTransform.fit(
        scaler,
        rows["train"],
        target_index=series.target_index,
        window=window,
        horizon=horizon,
        mode=target_mode,
    )
    pairs = {name: transform.training_pairs(values) for name, values in rows.items()}
    return Prepared(series, transform, rows, pairs, n_imputed, means)


def usable_columns(series: Series, train_rows: tuple[int, int]) -> Series:
    """``series`` without the columns that cannot be inputs, judged on the training split.

    A constant column carries nothing and is dropped. A column that rises or falls strictly
    (a counter, an index, a cumulative total) leaves its training range by construction, so the
    model would see values it never trained on and drift would be flagged on healthy traffic: it
    is dropped too, unless ``--features`` named it (it is then kept, and listed in
    ``monotonic_inputs`` for a warning). The target is always kept; a constant target is
    refused. Dropped columns are recorded with their reason.
    """
    lo, hi = train_rows
    keep: list[int] = []
    dropped = list(series.dropped)
    monotonic: list[str] = []
    for i, name in enumerate(series.feature_names):
        column = series.values[lo:hi, i]
        column = column[~np.isnan(column)]
        if len(column) and np.all(column == column[0]):
            if name == series.target:
                raise DataError(f"the target {name} is constant over the training split")
            dropped.append((name, "constant over the training split"))
            continue
        if _strictly_monotonic(column):
            if name != series.target and not series.features_named:
                dropped.append((name, "rises or falls strictly over the training split"))
                continue
            monotonic.append(name)
        keep.append(i)
    return replace(
        series,
        values=series.values[:, keep],
        feature_names=tuple(series.feature_names[i] for i in keep),
        dropped=tuple(dropped),
        monotonic_inputs=tuple(monotonic),
    )


def _strictly_monotonic(column: np.ndarray) -> bool:
    if len(column) < 3:
        return False
    steps = np.diff(column)
    return bool(np.all(steps > 0) or np.all(steps < 0))
