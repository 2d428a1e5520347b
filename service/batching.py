"""Dynamic micro-batching: concurrent requests share one model call.

Requests queue their windows; one worker takes as many queued windows as fit in
``max_batch_size`` (optionally waiting ``max_wait`` for more), runs the model on a dedicated
thread so the event loop keeps accepting RPCs, and hands each request its slice. While the model
is busy, new requests pile up and form the next batch, so batches grow with load without any
fixed delay at low load.

The queue is bounded in windows: past ``max_queue_windows`` a request is refused with
:class:`Overloaded` at once instead of waiting without bound. A request that is cancelled or past
its deadline while still queued is dropped before the model sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidWindow, ModelNotReady, Overloaded
from service.forecaster import BatchResult
from service.threads import MODEL_THREAD, MONITOR_THREAD, name_os_thread

log = logging.getLogger(__name__)

BatchObserver = Callable[[BatchResult], None]


@dataclass(eq=False)
class _Item:
    windows: np.ndarray
    future: asyncio.Future
    deadline: float | None  # event-loop time
    first_index: int = 0  # index of this chunk's first window in its request


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], BatchResult],
        *,
        max_batch_size: int,
        max_queue_windows: int,
        max_wait_s: float = 0.0,
        observers: tuple[BatchObserver, ...] = (),
    ):
        self._predict = predict
        self._max_batch = max_batch_size
        self._max_queue = max_queue_windows
        self._max_wait = max_wait_s
        self._observers = observers
        self._pending: deque[_Item] = deque()
        self._depth = 0
        self._wakeup = asyncio.Event()
        self._model_thread = ThreadPoolExecutor(
            1, thread_name_prefix="model", initializer=name_os_thread, initargs=(MODEL_THREAD,)
        )
        self._observer_thread = ThreadPoolExecutor(
            1,
            thread_name_prefix="monitor",
            initializer=name_os_thread,
            initargs=(MONITOR_THREAD,),
        )
        self._worker: asyncio.Task | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Windows waiting for the model (not counting the batch being computed)."""
        return self._depth

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the threads."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._model_thread.shutdown(wait=True)
        self._observer_thread.shutdown(wait=True)

    async def submit(self, windows: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Forecasts ``[n, horizon]`` for ``windows`` ``[n, window, features]``."""
        if self._closed:
            raise ModelNotReady("server is shutting down")
        n = len(windows)
        if self._depth + n > self._max_queue:
            raise Overloaded(
                f"server overloaded: {self._depth} windows queued, limit {self._max_queue}; "
                "retry with backoff"
            )
        loop = asyncio.get_running_loop()
        items = [
            _Item(windows[lo : lo + self._max_batch], loop.create_future(), deadline, lo)
            for lo in range(0, n, self._max_batch)
        ]
        self._pending.extend(items)
        self._depth += n
        self._wakeup.set()
        if len(items) == 1:
            return await items[0].future
        parts = await asyncio.gather(*(item.future for item in items))
        return np.concatenate(parts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._max_wait > 0 and self._depth < self._max_batch:
                await asyncio.sleep(self._max_wait)
            batch = self._take(loop.time())
            if not batch:
                continue
            windows = np.concatenate([item.windows for item in batch])
            try:
                result = await loop.run_in_executor(self._model_thread, self._predict, windows)
            except Exception as exc:  # noqa: BLE001 - fail this batch, keep serving
                log.exception("model call failed for a batch of %d windows", len(windows))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self._deliver(batch, result)
            if self._observers:  # one hand-off per batch, however many observers
                self._observer_thread.submit(_observe, self._observers, result)

    def _take(self, now: float) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._pending and size + len(self._pending[0].windows) <= self._max_batch:
            item = self._pending.popleft()
            self._depth -= len(item.windows)
            if item.future.done():  # cancelled by the client while queued: costs no model time
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.cancel()
                continue
            batch.append(item)
            size += len(item.windows)
        return batch

    @staticmethod
    def _deliver(batch: list[_Item], result: BatchResult) -> None:
        offset = 0
        for item in batch:
            n = len(item.windows)
            forecasts = result.forecasts[offset : offset + n]
            offset += n
            if item.future.done():
                continue
            finite = np.isfinite(forecasts).all(axis=1)
            if finite.all():
                item.future.set_result(forecasts)
            else:
                bad = item.first_index + int(np.argmin(finite))
                item.future.set_exception(
                    InvalidWindow(f"window {bad}: values are too extreme to forecast from")
                )


def _observe(observers: tuple[BatchObserver, ...], result: BatchResult) -> None:
    for observer in observers:
        try:
            observer(result)
        except Exception:  # noqa: BLE001 - monitoring must never take serving down
            log.exception("batch observer %r failed", observer)
