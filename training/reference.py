"""Reference statistics of the training inputs, stored in the manifest for drift monitoring."""

from __future__ import annotations

import numpy as np

from monitoring.calibration import reference_bins


def input_reference(
    scaled_train: np.ndarray, raw_train: np.ndarray, feature_names: tuple[str, ...]
) -> dict[str, dict]:
    """Per feature: mean, std, min, max and the 9 decile edges in scaled (model-input) units,
    the PSI bins derived from the deciles, and the raw-unit mean and std."""
    out = {}
    for i, name in enumerate(feature_names):
        col = scaled_train[:, i].astype(np.float64)
        raw = raw_train[:, i]
        out[name] = {
            "mean": float(col.mean()),
            "std": float(col.std()),
            "min": float(col.min()),
            "max": float(col.max()),
            **reference_bins(col),
            "raw_mean": float(raw.mean()),
            "raw_std": float(raw.std()),
        }
    return out
