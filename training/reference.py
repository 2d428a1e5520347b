"""Reference statistics of the training inputs, stored in the manifest for drift monitoring."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from monitoring.reference import feature_reference


def input_reference(
    scaled_train: np.ndarray, raw_train: np.ndarray, feature_names: tuple[str, ...]
) -> dict[str, dict]:
    """Per feature: mean, std, min, max and the 9 decile edges in scaled (model-input) units,
    the PSI bins derived from the deciles, and the raw-unit mean and std."""
    # TEMP shim (dicts) until run.py builds the typed manifest
    return {
        name: asdict(feature_reference(scaled_train[:, i], raw_train[:, i]))
        for i, name in enumerate(feature_names)
    }
