"""The offline prediction path: raw windows in training units -> forecasts in target units.

Training evaluates with this, and the service's parity test compares its answers against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.transform import WindowTransform


def predict_windows(
    model: Any, transform: WindowTransform, raw_windows: np.ndarray, *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (forecasts in target units ``[n, horizon]``, raw model output ``[n, horizon]``)."""
    x, anchors = transform.encode_windows(np.asarray(raw_windows, dtype=np.float64))
    raw = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
    return transform.decode(raw, anchors), raw
