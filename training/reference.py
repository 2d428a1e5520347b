"""Reference statistics of the training inputs, stored in the manifest for drift monitoring."""

from __future__ import annotations

import numpy as np

from monitoring.reference import FeatureReference, feature_reference


def input_reference(
    scaled_train: np.ndarray, raw_train: np.ndarray, feature_names: tuple[str, ...]
) -> dict[str, FeatureReference]:
    """Per feature, in input order: mean, std, min, max and the 9 decile edges in scaled
    (model-input) units, the PSI bins derived from the deciles, and the raw-unit mean and std."""
    return {
        name: feature_reference(scaled_train[:, i], raw_train[:, i])
        for i, name in enumerate(feature_names)
    }
