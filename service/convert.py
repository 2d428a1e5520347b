"""forecast.v1 protobuf <-> numpy, with the request validation (the checks themselves, shared
with the other protocols, are in :mod:`service.validation`). No model, no gRPC server code."""

from __future__ import annotations

import numpy as np

from service.api import pb
from service.errors import InvalidWindow
from service.validation import (
    MAX_SERIES_ID_BYTES,
    check_finite,
    check_levels,
    check_window_count,
    series_id_too_long,
)
from training.intervals import ForecastIntervals
from training.manifest import Manifest


def windows_from_request(
    request: pb.ForecastRequest, *, window: int, n_features: int, max_windows: int
) -> np.ndarray:
    """``ForecastRequest`` -> raw windows ``[n, window, n_features]`` float32.

    Raises :class:`InvalidWindow` naming the window index and the problem.
    """
    windows = request.windows
    count = len(windows)
    check_window_count(count, max_windows)
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
    check_finite(out)
    return out.reshape(count, window, n_features)


def levels_from_request(request: pb.ForecastRequest) -> tuple[float, ...]:
    """``ForecastRequest.levels`` (percent), checked (:func:`service.validation.check_levels`).
    Empty when none are asked for."""
    return check_levels(request.levels)


def series_ids_from_request(request: pb.ForecastRequest) -> list[str] | None:
    """Each window's ``series_id`` (empty: none), or None when no window has one.

    Raises :class:`InvalidWindow` naming the first window whose id is over
    :data:`~service.validation.MAX_SERIES_ID_BYTES` bytes."""
    ids = [w.series_id for w in request.windows]
    if not any(ids):
        return None
    for i, sid in enumerate(ids):
        size = series_id_too_long(sid)
        if size is not None:
            raise InvalidWindow(
                f"window {i}: series_id is {size} bytes; the limit is {MAX_SERIES_ID_BYTES}"
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


def split_metrics(manifest: Manifest, split: str) -> pb.SplitMetrics | None:
    """A manifest's error metrics of one evaluation split as the proto's message; None when
    the manifest has none for it."""
    m = manifest.metrics.get(split)
    if m is None:
        return None
    return pb.SplitMetrics(
        mae=m.mae,
        rmse=m.rmse,
        persistence_mae=m.persistence_mae,
        mean_forecast_mae=m.mean_mae,
        std_ratio=m.std_ratio,
        windows=m.n_windows,
    )
