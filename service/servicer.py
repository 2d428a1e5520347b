"""The forecast.v1 servicer: protobuf in, :class:`service.core.ForecastCore` call, protobuf out.
No try/except (see errors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple

import grpc
import numpy as np

from service.api import pb, pb_grpc
from service.convert import (
    levels_from_request,
    response_from_forecasts,
    series_ids_from_request,
    split_metrics,
    windows_from_request,
)
from service.core import ForecastCore
from service.errors import ForecastError, InvalidWindow
from service.forecaster import Forecaster
from service.lifecycle import ServingModel
from training.baselines import Baselines
from training.intervals import IntervalCalibration

# Messages of one stream that may be in the model pipeline at once.
STREAM_IN_FLIGHT = 32


class _Pending(NamedTuple):
    """A stream message in the model pipeline: the version it is pinned to, its windows,
    levels, series ids and forecasts to come."""

    model: ServingModel
    windows: np.ndarray
    levels: tuple[float, ...]
    series_ids: list[str] | None
    forecasts: asyncio.Future[np.ndarray]


class ForecastServicer(pb_grpc.ForecastServiceServicer):
    """Each request (each stream message) is pinned to the version serving when it arrives
    (see :mod:`service.core`)."""

    def __init__(self, core: ForecastCore) -> None:
        self._core = core

    def _parse(
        self, model: ServingModel, request: pb.ForecastRequest
    ) -> tuple[np.ndarray, tuple[float, ...], list[str] | None]:
        """The request's raw windows, interval levels and series ids, checked."""
        forecaster = model.forecaster
        windows = windows_from_request(
            request,
            window=forecaster.window,
            n_features=forecaster.n_features,
            max_windows=self._core.max_windows_per_request,
        )
        levels = levels_from_request(request)
        self._core.check_levels(model, levels)
        return windows, levels, series_ids_from_request(request)

    def _answer(
        self,
        model: ServingModel,
        windows: np.ndarray,
        levels: tuple[float, ...],
        series_ids: list[str] | None,
        forecasts: np.ndarray,
    ) -> pb.ForecastResponse:
        answer = self._core.answer(model, windows, levels, series_ids, forecasts)
        return response_from_forecasts(answer.forecasts, answer.version, answer.intervals)

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
        return self._core.deadline(context.time_remaining())

    async def Forecast(
        self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ForecastResponse:
        model = self._core.pin()
        windows, levels, series_ids = self._parse(model, request)
        forecasts = await self._core.forecast(model, windows, self._deadline(context))
        return self._answer(model, windows, levels, series_ids, forecasts)

    async def StreamForecast(
        self,
        request_iterator: AsyncIterator[pb.ForecastRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ForecastResponse]:
        """Messages are validated and submitted as they arrive (up to STREAM_IN_FLIGHT at once)
        and answered strictly in order. A bad message ends the stream with INVALID_ARGUMENT
        (FAILED_PRECONDITION for levels a version cannot serve) after the responses to every
        earlier message."""
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        # Pending messages, an exception, or None at the end.
        queue: asyncio.Queue[_Pending | Exception | None] = asyncio.Queue()
        deadline = self._deadline(context)

        async def read() -> None:
            index = 0
            try:
                async for request in request_iterator:
                    model = self._core.pin()
                    try:
                        windows, levels, series_ids = self._parse(model, request)
                    except ForecastError as exc:
                        queue.put_nowait(type(exc)(f"message {index}: {exc}"))
                        return
                    await slots.acquire()
                    forecasts = asyncio.ensure_future(
                        _with_message_index(index, self._core.forecast(model, windows, deadline))
                    )
                    queue.put_nowait(_Pending(model, windows, levels, series_ids, forecasts))
                    index += 1
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                forecasts = await item.forecasts
                slots.release()
                yield self._answer(
                    item.model, item.windows, item.levels, item.series_ids, forecasts
                )
            await reader  # surfaces a failure of the request stream itself
        finally:
            reader.cancel()
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, _Pending):
                    item.forecasts.cancel()

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInfo:
        return self._core.pin().info


async def _with_message_index(index: int, forecast: Awaitable[np.ndarray]) -> np.ndarray:
    """Prefix a stream message's window error (found after batching) with its message index."""
    try:
        return await forecast
    except InvalidWindow as exc:
        raise InvalidWindow(f"message {index}: {exc}") from None


def model_info(
    forecaster: Forecaster, *, max_windows_per_request: int, device: str
) -> pb.ModelInfo:
    manifest = forecaster.artifacts.manifest

    return pb.ModelInfo(
        model_version=forecaster.version,
        feature_names=forecaster.artifacts.feature_names,
        target=manifest.target,
        window=forecaster.window,
        horizon=forecaster.transform.horizon,
        target_mode=forecaster.transform.mode,
        validation=split_metrics(manifest, "val"),
        test=split_metrics(manifest, "test"),
        features=[
            pb.FeatureReference(
                name=name,
                mean=ref.mean,
                std=ref.std,
                min=ref.min,
                max=ref.max,
                raw_mean=ref.raw_mean or 0.0,
                raw_std=ref.raw_std or 0.0,
            )
            for name, ref in manifest.reference.features.items()
        ],
        max_windows_per_request=max_windows_per_request,
        created_at=manifest.created_at,
        device=device,
        intervals=_interval_scores(manifest.intervals),
        **_baseline_fields(manifest.baselines),
    )


def _interval_scores(intervals: IntervalCalibration | None) -> list[pb.IntervalScore]:
    """The served intervals' test coverage and width; none for versions without them."""
    if intervals is None:
        return []
    return [
        pb.IntervalScore(level=s.level, coverage=s.coverage, mean_width=s.mean_width)
        for s in intervals.test
    ]


def _baseline_fields(baselines: Baselines | None) -> dict[str, Any]:
    """ModelInfo's baseline fields: every score, and the best statistical baseline on
    validation with whether it beat the model. Nothing for versions trained before them."""
    if baselines is None:
        return {}
    fields: dict[str, Any] = {
        "baselines": [
            pb.BaselineScore(
                name=s.name,
                period=s.period or 0,
                val_mae=s.val_mae,
                test_mae=s.test_mae,
                statistical=s.statistical,
            )
            for s in baselines.scores
        ],
        "seasonal_periods": list(baselines.periods),
        "one_step_validation_mae": baselines.model_val_mae or 0.0,
        "one_step_test_mae": baselines.model_test_mae or 0.0,
    }
    best = baselines.best_statistical("val")
    if best is not None:
        fields["best_statistical_baseline"] = best.name
        model = baselines.model_val_mae
        fields["best_statistical_baseline_beats_model"] = model is not None and best.val_mae < model
    return fields
