"""The one forecasting path behind every protocol: pin the serving version, batch the windows
through its model, then intervals, shadow evaluation and realized accuracy. No gRPC, no
protobuf: each protocol's servicer converts its request into raw windows, levels and series ids,
calls this, and converts the :class:`Answer` back.

A request is pinned to the version serving when it arrives (:meth:`ForecastCore.pin`): that
version's model forecasts all its windows, its calibration makes the intervals and its name is
the answer's version, so no request is answered by a mixture of versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitoring.realized import RealizedAccuracy
from service.batching import MicroBatcher
from service.lifecycle import ModelLifecycle, ServingModel
from training.intervals import ForecastIntervals


@dataclass(frozen=True)
class Answer:
    """One request's forecasts ``[n, horizon]`` float64 (target units), with intervals when
    levels were asked for, and the version that made them."""

    forecasts: np.ndarray
    intervals: ForecastIntervals | None
    version: str


class ForecastCore:
    def __init__(
        self,
        lifecycle: ModelLifecycle,
        batcher: MicroBatcher,
        *,
        max_windows_per_request: int,
        realized: RealizedAccuracy | None = None,
    ) -> None:
        """``realized``: where windows with a series id go to be scored later (None: off)."""
        self._lifecycle = lifecycle
        self._batcher = batcher
        self.max_windows_per_request = max_windows_per_request
        self._realized = realized

    def pin(self) -> ServingModel:
        """The version serving now: the one a request arriving now is answered by."""
        return self._lifecycle.serving

    @staticmethod
    def check_levels(model: ServingModel, levels: Sequence[float]) -> None:
        """Refuse levels the version cannot serve (no interval calibration)."""
        model.forecaster.check_levels(levels)

    @staticmethod
    def deadline(remaining_seconds: float | None) -> float | None:
        """The event-loop time by which a call with ``remaining_seconds`` left must end."""
        if remaining_seconds is None:
            return None
        return asyncio.get_running_loop().time() + remaining_seconds

    async def forecast(
        self, model: ServingModel, windows: np.ndarray, deadline: float | None
    ) -> np.ndarray:
        """Forecasts ``[n, horizon]`` of raw ``windows`` ``[n, window, features]``, all by
        ``model``, batched with every other request's windows."""
        return await self._batcher.submit(windows, deadline, model.forecaster.predict)

    def answer(
        self,
        model: ServingModel,
        windows: np.ndarray,
        levels: tuple[float, ...],
        series_ids: list[str] | None,
        forecasts: np.ndarray,
    ) -> Answer:
        """The answer to one request (or stream message) whose ``forecasts`` ``model`` made:
        intervals only when asked for; the windows offered to a candidate's shadow evaluation
        and, with series ids, queued for realized-accuracy scoring (off the event loop)."""
        forecaster = model.forecaster
        self._lifecycle.offer(model, windows, series_ids, forecasts)
        intervals = forecaster.intervals(windows, forecasts, levels) if levels else None
        # Per request, for realized-accuracy scoring: forecasts [n, horizon] float64 and, with
        # levels, intervals.levels (percent, request order) and intervals.lo / intervals.hi
        # [n, L, horizon] float64, target units; intervals is None without levels.
        if series_ids is not None and self._realized is not None:
            if intervals is None:
                self._realized.submit(series_ids, windows, forecasts)
            else:
                self._realized.submit(
                    series_ids,
                    windows,
                    forecasts,
                    levels=intervals.levels,
                    lower=intervals.lo,
                    upper=intervals.hi,
                )
        return Answer(forecasts, intervals, forecaster.version)

    async def run(
        self,
        model: ServingModel,
        windows: np.ndarray,
        levels: tuple[float, ...],
        series_ids: list[str] | None,
        deadline: float | None,
    ) -> Answer:
        """:meth:`forecast` then :meth:`answer`: one unary request."""
        forecasts = await self.forecast(model, windows, deadline)
        return self.answer(model, windows, levels, series_ids, forecasts)
