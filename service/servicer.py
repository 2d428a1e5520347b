"""The gRPC servicer: protobuf in, core call, protobuf out. No try/except (see errors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import numpy as np

from service.api import pb, pb_grpc
from service.batching import MicroBatcher
from service.convert import response_from_forecasts, windows_from_request
from service.errors import InvalidWindow
from service.forecaster import Forecaster
from training.baselines import Baselines

# Messages of one stream that may be in the model pipeline at once.
STREAM_IN_FLIGHT = 32


class ForecastServicer(pb_grpc.ForecastServiceServicer):
    def __init__(
        self,
        forecaster: Forecaster,
        batcher: MicroBatcher,
        *,
        max_windows_per_request: int,
        model_info: pb.ModelInfo,
    ):
        self._forecaster = forecaster
        self._batcher = batcher
        self._max_windows = max_windows_per_request
        self._info = model_info

    def _windows(self, request: pb.ForecastRequest) -> np.ndarray:
        return windows_from_request(
            request,
            window=self._forecaster.window,
            n_features=self._forecaster.n_features,
            max_windows=self._max_windows,
        )

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining

    async def Forecast(
        self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ForecastResponse:
        forecasts = await self._batcher.submit(self._windows(request), self._deadline(context))
        return response_from_forecasts(forecasts, self._forecaster.version)

    async def StreamForecast(
        self,
        request_iterator: AsyncIterator[pb.ForecastRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ForecastResponse]:
        """Messages are validated and submitted as they arrive (up to STREAM_IN_FLIGHT at once)
        and answered strictly in order. A bad message ends the stream with INVALID_ARGUMENT
        after the responses to every earlier message."""
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        # Futures, an exception, or None at the end.
        queue: asyncio.Queue[asyncio.Future[np.ndarray] | Exception | None] = asyncio.Queue()
        deadline = self._deadline(context)

        async def read() -> None:
            index = 0
            try:
                async for request in request_iterator:
                    try:
                        windows = self._windows(request)
                    except InvalidWindow as exc:
                        queue.put_nowait(InvalidWindow(f"message {index}: {exc}"))
                        return
                    await slots.acquire()
                    queue.put_nowait(
                        asyncio.ensure_future(
                            _with_message_index(index, self._batcher.submit(windows, deadline))
                        )
                    )
                    index += 1
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                forecasts = await item
                slots.release()
                yield response_from_forecasts(forecasts, self._forecaster.version)
            await reader  # surfaces a failure of the request stream itself
        finally:
            reader.cancel()
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, asyncio.Future):
                    item.cancel()

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInfo:
        return self._info


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

    def split(name: str) -> pb.SplitMetrics | None:
        m = manifest.metrics.get(name)
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

    return pb.ModelInfo(
        model_version=forecaster.version,
        feature_names=forecaster.artifacts.feature_names,
        target=manifest.target,
        window=forecaster.window,
        horizon=forecaster.transform.horizon,
        target_mode=forecaster.transform.mode,
        validation=split("val"),
        test=split("test"),
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
        **_baseline_fields(manifest.baselines),
    )


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
