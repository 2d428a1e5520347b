"""Protobuf <-> numpy, with the request validation. No model, no gRPC server code."""

from __future__ import annotations

import numpy as np

from service.api import pb
from service.errors import InvalidWindow


def windows_from_request(
    request: pb.ForecastRequest, *, window: int, n_features: int, max_windows: int
) -> np.ndarray:
    """``ForecastRequest`` -> raw windows ``[n, window, n_features]`` float32.

    Raises :class:`InvalidWindow` naming the window index and the problem.
    """
    windows = request.windows
    count = len(windows)
    if count == 0:
        raise InvalidWindow("request has no windows")
    if count > max_windows:
        raise InvalidWindow(f"request has {count} windows; the limit is {max_windows}")
    expected = window * n_features
    out = np.empty((count, expected), dtype=np.float32)
    for i, w in enumerate(windows):
        values = w.values
        if len(values) != expected:
            raise InvalidWindow(
                f"window {i}: has {len(values)} values, expected {expected} "
                f"({window} timesteps x {n_features} features)"
            )
        out[i] = values
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(np.argmin(finite.all(axis=1)))
        kind = "NaN" if np.isnan(out[bad]).any() else "Inf"
        raise InvalidWindow(f"window {bad}: contains {kind}; impute missing values first")
    return out.reshape(count, window, n_features)


def response_from_forecasts(forecasts: np.ndarray, version: str) -> pb.ForecastResponse:
    return pb.ForecastResponse(
        predictions=[pb.Prediction(values=row) for row in forecasts.tolist()],
        model_version=version,
    )
