"""Dynamic micro-batching: concurrent requests share one model call.

Requests queue their windows; one worker takes as many queued windows as fit in
``max_batch_size`` (optionally waiting ``max_wait`` for more), runs the model on a dedicated
thread so the event loop keeps accepting RPCs, and hands each request its slice. While the model
is busy, new requests pile up and form the next batch, so batches grow with load without any
fixed delay at low load.

The queue (:class:`WindowQueue`) is bounded in windows: past its limit a request is refused with
:class:`Overloaded` at once instead of waiting without bound. A request that is cancelled or past
its deadline while still queued is dropped before the model sees it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
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
Predict = Callable[[np.ndarray], BatchResult]


@dataclass(frozen=True)
class IdleHook:
    """Runs on the monitoring thread once traffic has paused for ``seconds``, and once at close
    after the last batch (observers that buffer batches apply what they hold)."""

    call: Callable[[], None]
    seconds: float


@dataclass(eq=False)
class _Item:
    windows: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float | None  # event-loop time
    first_index: int = 0  # index of this chunk's first window in its request
    predict: Predict | None = None  # the model version the request was pinned to


class WindowQueue:
    """Windows waiting for the model, bounded in windows: a request that would take the queue
    past ``max_windows`` is refused with :class:`Overloaded`."""

    def __init__(self, max_windows: int) -> None:
        self.max_windows = max_windows
        self._items: deque[_Item] = deque()
        self._depth = 0

    @property
    def depth(self) -> int:
        """Windows waiting (not counting the batch being computed)."""
        return self._depth

    def put(self, items: list[_Item], windows: int) -> None:
        """Queue the chunks of one request of ``windows`` windows, or refuse them all."""
        if self._depth + windows > self.max_windows:
            raise Overloaded(
                f"server overloaded: {self._depth} windows queued, limit {self.max_windows}; "
                "retry with backoff"
            )
        self._items.extend(items)
        self._depth += windows

    def take(self, max_windows: int, now: float) -> list[_Item]:
        """The next items that fit in ``max_windows``, skipping cancelled and expired ones. A
        batch goes to one model version: it ends before an item pinned to another."""
        batch: list[_Item] = []
        size = 0
        while self._items and size + len(self._items[0].windows) <= max_windows:
            if batch and self._items[0].predict != batch[0].predict:
                break
            item = self._items.popleft()
            self._depth -= len(item.windows)
            if item.future.done():  # cancelled by the client while queued: costs no model time
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.cancel()
                continue
            batch.append(item)
            size += len(item.windows)
        return batch


class MicroBatcher:
    def __init__(
        self,
        predict: Predict,
        queue: WindowQueue,
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        observers: tuple[BatchObserver, ...] = (),
        on_idle: IdleHook | None = None,
    ) -> None:
        """``observers`` run on every model batch, on the monitoring thread; ``on_idle`` runs
        there too (see :class:`IdleHook`)."""
        self._predict = predict
        self._queue = queue
        self._max_batch = max_batch_size
        self._max_wait = max_wait_s
        self._observer_thread = _ObserverThread(observers, on_idle) if observers else None
        self._wakeup = asyncio.Event()
        self._model_thread = ThreadPoolExecutor(
            1, thread_name_prefix="model", initializer=name_os_thread, initargs=(MODEL_THREAD,)
        )
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Windows waiting for the model (not counting the batch being computed)."""
        return self._queue.depth

    def start(self) -> None:
        if self._observer_thread is not None:
            self._observer_thread.start()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the threads."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._model_thread.shutdown(wait=True)
        if self._observer_thread is not None:
            # Joining waits for the last batches to be observed: off the event loop.
            await asyncio.to_thread(self._observer_thread.close)

    async def submit(
        self, windows: np.ndarray, deadline: float | None = None, predict: Predict | None = None
    ) -> np.ndarray:
        """Forecasts ``[n, horizon]`` for ``windows`` ``[n, window, features]``, all made by
        ``predict`` (the version the request is pinned to; default: the batcher's)."""
        if self._closed:
            raise ModelNotReady("server is shutting down")
        n = len(windows)
        loop = asyncio.get_running_loop()
        items = [
            _Item(windows[lo : lo + self._max_batch], loop.create_future(), deadline, lo, predict)
            for lo in range(0, n, self._max_batch)
        ]
        self._queue.put(items, n)
        self._wakeup.set()
        if len(items) == 1:
            return await items[0].future
        parts = await asyncio.gather(*(item.future for item in items))
        return np.concatenate(parts)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue.depth:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._max_wait > 0 and self._queue.depth < self._max_batch:
                await asyncio.sleep(self._max_wait)
            batch = self._queue.take(self._max_batch, loop.time())
            if not batch:
                continue
            windows = np.concatenate([item.windows for item in batch])
            predict = batch[0].predict or self._predict
            try:
                result = await loop.run_in_executor(self._model_thread, predict, windows)
            except Exception as exc:  # noqa: BLE001 - fail this batch, keep serving
                log.exception("model call failed for a batch of %d windows", len(windows))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self._deliver(batch, result)
            if self._observer_thread is not None:
                self._observer_thread.put(result)

    @staticmethod
    def _deliver(batch: list[_Item], result: BatchResult) -> None:
        offset = 0
        for item in batch:
            n = len(item.windows)
            forecasts = result.forecasts[offset : offset + n]
            offset += n
            if item.future.done():
                continue
            # As they go on the wire (float32): a float64 forecast past float32's range is inf.
            with np.errstate(over="ignore"):
                finite = np.isfinite(forecasts.astype(np.float32)).all(axis=1)
            if finite.all():
                item.future.set_result(forecasts)
            else:
                bad = item.first_index + int(np.argmin(finite))
                item.future.set_exception(
                    InvalidWindow(f"window {bad}: values are too extreme to forecast from")
                )


class _ObserverThread:
    """Runs the observers on every model batch, in order, on one thread of their own.

    The event loop's side of a hand-off is one put on a C-level queue: no future, no Python
    lock. The thread wakes at most ``1 / COALESCE_SECONDS`` times a second: after handling
    what is queued it pauses, so the batches that arrive meanwhile are picked up together,
    and a put finds no sleeper to wake (under load, a wake-up per small batch would cost more
    kernel time than the observers themselves)."""

    COALESCE_SECONDS = 0.01

    def __init__(self, observers: tuple[BatchObserver, ...], on_idle: IdleHook | None) -> None:
        self._observers = observers
        self._on_idle = on_idle
        self._queue: queue.SimpleQueue[BatchResult | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, result: BatchResult) -> None:
        self._queue.put(result)

    def close(self) -> None:
        """Observe every batch already handed off, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _loop(self) -> None:
        name_os_thread(MONITOR_THREAD)
        try:
            self._observe_until_closed()
        except BaseException:
            log.critical("monitoring thread stopped; batches are no longer observed", exc_info=True)
            raise

    def _observe_until_closed(self) -> None:
        idle = self._on_idle
        busy = False  # batches observed since the last idle call
        while True:
            try:
                result = self._queue.get(timeout=idle.seconds if busy and idle else None)
            except queue.Empty:
                busy = False
                self._idle()
                continue
            while result is not None:
                busy = idle is not None
                for observer in self._observers:
                    self._guarded(observer, result)
                try:
                    result = self._queue.get_nowait()
                except queue.Empty:
                    break
            if result is None:
                self._idle()
                return
            time.sleep(self.COALESCE_SECONDS)

    def _idle(self) -> None:
        if self._on_idle is not None:
            self._guarded(self._on_idle.call)

    @staticmethod
    def _guarded(call: Callable[..., object], *args: object) -> None:
        try:
            call(*args)
        except Exception:  # noqa: BLE001 - monitoring must never take serving down
            log.exception("monitoring call %r failed", call)
