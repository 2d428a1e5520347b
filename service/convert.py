"""Protobuf <-> numpy, with the request validation. No model, no gRPC server code."""

from __future__ import annotations

import math

import numpy as np

from service.api import pb
from service.errors import InvalidRequest, InvalidWindow
from training.intervals import ForecastIntervals

MAX_LEVELS = 8
"""Interval levels one request may ask for."""
MAX_SERIES_ID_BYTES = 256
"""The longest ``Window.series_id``, in UTF-8 bytes."""


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


def levels_from_request(request: pb.ForecastRequest) -> tuple[float, ...]:
    """``ForecastRequest.levels`` (percent), checked: at most :data:`MAX_LEVELS`, each in
    (0, 100), none repeated. Empty when none are asked for.

    Raises :class:`InvalidRequest` naming the offending level."""
    levels = tuple(request.levels)
    if len(levels) > MAX_LEVELS:
        raise InvalidRequest(f"request has {len(levels)} levels; the limit is {MAX_LEVELS}")
    seen: set[float] = set()
    for level in levels:
        if math.isnan(level):
            raise InvalidRequest("level NaN is not a number; levels are percent in (0, 100)")
        if not 0 < level < 100:
            raise InvalidRequest(f"level {level:g} is outside (0, 100); levels are percent")
        if level in seen:
            raise InvalidRequest(f"level {level:g} is repeated")
        seen.add(level)
    return levels


def series_ids_from_request(request: pb.ForecastRequest) -> list[str] | None:
    """Each window's ``series_id`` (empty: none), or None when no window has one.

    Raises :class:`InvalidWindow` naming the first window whose id is over
    :data:`MAX_SERIES_ID_BYTES` bytes."""
    ids = [w.series_id for w in request.windows]
    if not any(ids):
        return None
    for i, sid in enumerate(ids):
        # A character is at most 4 UTF-8 bytes: only longer strings need encoding.
        if len(sid) * 4 > MAX_SERIES_ID_BYTES and len(sid.encode()) > MAX_SERIES_ID_BYTES:
            raise InvalidWindow(
                f"window {i}: series_id is {len(sid.encode())} bytes; the limit is "
                f"{MAX_SERIES_ID_BYTES}"
            )
    return ids


def response_from_forecasts(
    forecasts: np.ndarray, version: str, intervals: ForecastIntervals | None = None
) -> pb.ForecastResponse:
    """Forecasts ``[n, horizon]``, and with ``intervals`` one ``Interval`` per level in each
    prediction, in the order the levels were asked for."""
    if intervals is None:
        return pb.ForecastResponse(
            predictions=[pb.Prediction(values=row) for row in forecasts.tolist()],
            model_version=version,
        )
    levels = intervals.levels
    return pb.ForecastResponse(
        predictions=[
            pb.Prediction(
                values=row,
                intervals=[
                    pb.Interval(level=level, lo=lo_row, hi=hi_row)
                    for level, lo_row, hi_row in zip(levels, lo, hi, strict=True)
                ],
            )
            for row, lo, hi in zip(
                forecasts.tolist(), intervals.lo.tolist(), intervals.hi.tolist(), strict=True
            )
        ],
        model_version=version,
    )
