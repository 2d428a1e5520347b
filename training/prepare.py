"""Split, impute, scale and window a series, with statistics from the training split only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import Series, chronological_split, impute
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
    """Split, impute and scale with training statistics only, then window each split."""
    split = chronological_split(
        len(series.values),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_rows=window + horizon + 1,
    )
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
