"""Held-out traffic for detector replays: the validation and test windows of a series, sent
through the model exactly as the service would see them (float32 on the wire)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from monitoring.replay import Traffic
from training.artifacts import Artifacts
from training.data import Series
from training.predict import predict_windows
from training.prepare import prepare
from training.transform import sliding_windows, window_ends


def held_out_windows(
    series: Series, *, window: int, horizon: int, val_fraction: float, test_fraction: float
) -> np.ndarray:
    """Raw windows ``[n, window, F]`` of the validation then the test split, in time order."""
    prepared = prepare(
        series,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        window=window,
        horizon=horizon,
    )
    parts = []
    for name in ("val", "test"):
        values = prepared.splits[name]
        parts.append(sliding_windows(values, window, window_ends(len(values), window, horizon)))
    return np.concatenate(parts)


def traffic_for(
    artifacts: Artifacts,
    raw_windows: np.ndarray,
    distort: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Traffic:
    """What the monitor sees when ``raw_windows`` (optionally distorted) are served."""
    windows = raw_windows if distort is None else distort(raw_windows.copy())
    windows = windows.astype(np.float32).astype(np.float64)  # the gRPC wire format
    transform = artifacts.transform()
    forecasts, raw_output = predict_windows(artifacts.model, transform, windows)
    inputs, _ = transform.encode_windows(windows)
    return Traffic(inputs[:, -1, :].astype(np.float64), raw_output, forecasts)
