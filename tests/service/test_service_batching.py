"""Dynamic micro-batching: on a served model (observed through a batch observer) and unit-level."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_testkit import EXTREME, start_server, target_of

from service.api import pb, pb_grpc
from service.batching import IdleHook, MicroBatcher, WindowQueue
from service.client import request_from_windows
from service.errors import ModelNotReady, Overloaded
from service.forecaster import BatchResult, Forecaster
from service.threads import MODEL_THREAD, MONITOR_THREAD

TIMEOUT = 10.0
IDLE_SECONDS = 0.1  # the pause after which the idle hook runs


class BatchLog:
    """A batch observer that keeps what it saw; it runs on the batcher's monitoring thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._batches: list[BatchResult] = []
        self.os_thread_names: set[str] = set()

    def __call__(self, result: BatchResult) -> None:
        with self._lock:
            self._batches.append(result)
            self.os_thread_names.add(_os_thread_name(threading.get_native_id()))

    def take(self) -> list[BatchResult]:
        with self._lock:
            batches, self._batches = self._batches, []
        return batches

    async def take_windows(self, count: int, timeout: float = TIMEOUT) -> list[BatchResult]:
        """Wait until batches covering ``count`` windows have been observed, and take them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                seen = sum(len(b.forecasts) for b in self._batches)
            if seen >= count:
                break
            await asyncio.sleep(0.01)
        return self.take()


def _os_thread_name(native_id: int) -> str:
    """The OS name of a thread of this process ("" if it ended meanwhile)."""
    try:
        return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.fixture(scope="module")
def batch_log() -> BatchLog:
    return BatchLog()


@pytest.fixture(scope="module")
def batching_settings(settings):
    """A short max wait lets concurrent requests meet in one batch; a small queue limit."""
    return replace(
        settings,
        max_wait_ms=50.0,
        max_queue_windows=100,
        max_windows_per_request=128,
        max_message_bytes=1024 * 1024,
    )


@pytest.fixture(scope="module")
def observed_server(aio, batching_settings, artifacts, batch_log):
    running = aio.run(start_server(batching_settings, artifacts, observers=(batch_log,)))
    yield running
    aio.run(running.shutdown(grace=1.0))


@pytest.fixture
def observed_target(observed_server, batch_log) -> Iterator[str]:
    batch_log.take()
    yield target_of(observed_server)
    batch_log.take()


async def test_concurrent_requests_share_model_calls(observed_target, batch_log, windows):
    sent = 48
    async with grpc.aio.insecure_channel(observed_target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        responses = await asyncio.gather(
            *(
                stub.Forecast(request_from_windows(windows[i : i + 1]), timeout=TIMEOUT)
                for i in range(sent)
            )
        )

    batches = await batch_log.take_windows(sent)
    sizes = [len(b.forecasts) for b in batches]
    assert all(len(r.predictions) == 1 for r in responses)
    assert sum(sizes) == sent
    assert max(sizes) > 1, sizes
    assert len(batches) < sent


async def test_batch_observer_sees_inputs_and_outputs(
    observed_target, batch_log, windows, artifacts
):
    async with grpc.aio.insecure_channel(observed_target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        response = await stub.Forecast(request_from_windows(windows[:3]), timeout=TIMEOUT)

    (batch,) = await batch_log.take_windows(3)
    n_features = len(artifacts.feature_names)
    assert batch.inputs.shape == (3, artifacts.window, n_features)
    assert batch.raw_output.shape == (3, artifacts.horizon)
    assert batch.model_seconds > 0
    np.testing.assert_allclose(
        batch.forecasts, [list(p.values) for p in response.predictions], rtol=1e-6
    )
    # The inputs are the scaled windows: the training transform, applied once.
    expected_inputs, _ = artifacts.transform().encode_windows(windows[:3])
    np.testing.assert_allclose(batch.inputs, expected_inputs, rtol=1e-6)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
async def test_model_and_monitoring_threads_carry_os_names(observed_target, batch_log, windows):
    """`top -H` and the benchmarks tell the model's and the monitoring's CPU apart by name."""
    async with grpc.aio.insecure_channel(observed_target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        await stub.Forecast(request_from_windows(windows[:2]), timeout=TIMEOUT)
    await batch_log.take_windows(2)

    names = {_os_thread_name(int(task.name)) for task in Path("/proc/self/task").iterdir()}
    assert MODEL_THREAD in names
    assert batch_log.os_thread_names == {MONITOR_THREAD}


async def test_extreme_window_fails_alone_in_a_shared_batch(observed_target, batch_log, windows):
    """3e38 in every cell scales past float32 and gives a non-finite forecast. Only that request
    fails; the others in the same model call get their forecasts.

    (The overflow warning is ignored: see test_forecaster_scales_extreme_window_silently.)
    """
    extreme = np.full_like(windows[:1], EXTREME)
    async with grpc.aio.insecure_channel(observed_target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        calls = [
            stub.Forecast(request_from_windows(windows[i : i + 1]), timeout=TIMEOUT)
            for i in range(7)
        ]
        calls.insert(3, stub.Forecast(request_from_windows(extreme), timeout=TIMEOUT))
        results = await asyncio.gather(*calls, return_exceptions=True)

    bad = results.pop(3)
    assert all(isinstance(r, pb.ForecastResponse) for r in results), results
    assert isinstance(bad, grpc.aio.AioRpcError)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.details() == "window 0: values are too extreme to forecast from"
    batches = await batch_log.take_windows(8)
    (shared,) = [b for b in batches if not np.isfinite(b.inputs).all()]
    assert len(shared.forecasts) > 1, "the extreme window did not share its model call"


async def test_extreme_window_error_names_its_index_across_batches(
    observed_target, windows, batching_settings
):
    """A request spanning several model calls names the window's index in the request."""
    count = batching_settings.max_batch_size + 5
    many = windows[:count].copy()
    many[count - 2] = EXTREME
    async with grpc.aio.insecure_channel(observed_target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Forecast(request_from_windows(many), timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"window {count - 2}: values are too extreme to forecast from"
    )


async def test_forecast_over_the_queue_limit_is_resource_exhausted(
    observed_target, windows, batching_settings
):
    limit = batching_settings.max_queue_windows
    request = request_from_windows(np.concatenate([windows, windows])[: limit + 1])
    async with grpc.aio.insecure_channel(observed_target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Forecast(request, timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in caught.value.details()
    assert "retry with backoff" in caught.value.details()


def test_forecaster_scales_extreme_window_silently(artifacts, windows):
    forecaster = Forecaster(artifacts, buckets=(4,), jit_compile=False)
    batch = windows[:4].copy()
    batch[2] = EXTREME

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = forecaster.predict(batch)

    assert np.isfinite(result.forecasts[[0, 1, 3]]).all()


# -------------------------------------------------------------------------------------------
# MicroBatcher on its own, with a slow plain predict function
# -------------------------------------------------------------------------------------------


class GatedPredict:
    """A predict function that blocks until released and records every batch it was given.

    Its forecast of a window is the window's first value, so answers are easy to check.
    """

    def __init__(self):
        self.calls: list[np.ndarray] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, windows: np.ndarray) -> BatchResult:
        self.calls.append(windows.copy())
        self.started.set()
        if not self.release.wait(timeout=TIMEOUT):
            raise TimeoutError("the test never released the model")
        forecasts = windows[:, 0, :1].astype(np.float64)
        return BatchResult(forecasts, forecasts.astype(np.float32), windows, 0.001)

    async def wait_until_busy(self) -> None:
        assert await asyncio.to_thread(self.started.wait, TIMEOUT), "the model was never called"

    def seen(self) -> set[float]:
        return {float(v) for batch in self.calls for v in batch[:, 0, 0]}


def constant_windows(value: float, count: int = 1) -> np.ndarray:
    return np.full((count, 2, 1), value, np.float32)


async def test_batcher_merges_windows_queued_while_the_model_is_busy():
    predict = GatedPredict()
    batcher = MicroBatcher(predict, WindowQueue(64), max_batch_size=8)
    batcher.start()
    first = asyncio.create_task(batcher.submit(constant_windows(1.0)))
    await predict.wait_until_busy()
    queued = [asyncio.create_task(batcher.submit(constant_windows(v, 2))) for v in (2.0, 3.0, 4.0)]
    await asyncio.sleep(0.05)
    assert batcher.queue_depth == 6

    predict.release.set()
    results = await asyncio.gather(first, *queued)
    await batcher.close()

    assert [len(c) for c in predict.calls] == [1, 6]
    assert [r[:, 0].tolist() for r in results] == [[1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]


async def test_batcher_full_queue_raises_overloaded():
    predict = GatedPredict()
    batcher = MicroBatcher(predict, WindowQueue(4), max_batch_size=2)
    batcher.start()
    in_model = asyncio.create_task(batcher.submit(constant_windows(1.0, 2)))
    await predict.wait_until_busy()
    queued = asyncio.create_task(batcher.submit(constant_windows(2.0, 4)))
    await asyncio.sleep(0.01)

    with pytest.raises(Overloaded, match="4 windows queued, limit 4"):
        await batcher.submit(constant_windows(3.0))

    predict.release.set()
    await asyncio.gather(in_model, queued)
    await batcher.close()
    assert 3.0 not in predict.seen()


async def test_batcher_cancelled_queued_request_never_reaches_predict():
    predict = GatedPredict()
    batcher = MicroBatcher(predict, WindowQueue(64), max_batch_size=4)
    batcher.start()
    in_model = asyncio.create_task(batcher.submit(constant_windows(1.0)))
    await predict.wait_until_busy()
    cancelled = asyncio.create_task(batcher.submit(constant_windows(2.0)))
    kept = asyncio.create_task(batcher.submit(constant_windows(3.0)))
    await asyncio.sleep(0.01)

    cancelled.cancel()
    predict.release.set()
    await asyncio.gather(in_model, kept)
    await batcher.close()

    assert cancelled.cancelled()
    assert predict.seen() == {1.0, 3.0}


async def test_batcher_drops_request_whose_deadline_passed_in_the_queue():
    predict = GatedPredict()
    batcher = MicroBatcher(predict, WindowQueue(64), max_batch_size=4)
    batcher.start()
    loop = asyncio.get_running_loop()
    in_model = asyncio.create_task(batcher.submit(constant_windows(1.0)))
    await predict.wait_until_busy()
    expired = asyncio.create_task(
        batcher.submit(constant_windows(2.0), deadline=loop.time() + 0.01)
    )
    in_time = asyncio.create_task(
        batcher.submit(constant_windows(3.0), deadline=loop.time() + TIMEOUT)
    )
    await asyncio.sleep(0.05)

    predict.release.set()
    await asyncio.wait([in_model, expired, in_time], timeout=TIMEOUT)
    await batcher.close()

    assert expired.cancelled()
    assert in_time.result()[:, 0].tolist() == [3.0]
    assert predict.seen() == {1.0, 3.0}


async def test_batcher_failed_model_call_fails_only_its_batch():
    calls = []

    def flaky_predict(windows: np.ndarray) -> BatchResult:
        calls.append(len(windows))
        if len(calls) == 1:
            raise RuntimeError("model blew up")
        forecasts = windows[:, 0, :1].astype(np.float64)
        return BatchResult(forecasts, forecasts.astype(np.float32), windows, 0.001)

    batcher = MicroBatcher(flaky_predict, WindowQueue(64), max_batch_size=4)
    batcher.start()

    with pytest.raises(RuntimeError, match="model blew up"):
        await batcher.submit(constant_windows(1.0))
    recovered = await batcher.submit(constant_windows(2.0))
    await batcher.close()

    assert recovered[:, 0].tolist() == [2.0]


async def test_batcher_refuses_work_after_close():
    predict = GatedPredict()
    predict.release.set()
    batcher = MicroBatcher(predict, WindowQueue(64), max_batch_size=4)
    batcher.start()
    await batcher.close()

    with pytest.raises(ModelNotReady, match="shutting down"):
        await batcher.submit(constant_windows(1.0))
    assert predict.calls == []


def instant_predict(windows: np.ndarray) -> BatchResult:
    forecasts = windows[:, 0, :1].astype(np.float64)
    return BatchResult(forecasts, forecasts.astype(np.float32), windows, 0.001)


class Events:
    """Observer and idle hook that record, in order, what the monitoring thread did."""

    def __init__(self, fail_first_batch: bool = False):
        self._lock = threading.Lock()
        self.log: list[str | float] = []
        self._fail = fail_first_batch

    def observe(self, result: BatchResult) -> None:
        with self._lock:
            self.log.append(float(result.forecasts[0, 0]))
            if self._fail:
                self._fail = False
                raise RuntimeError("observer blew up")

    def idle(self) -> None:
        with self._lock:
            self.log.append("idle")

    def snapshot(self) -> list[str | float]:
        with self._lock:
            return list(self.log)


def watched_batcher(events: Events, max_batch_size: int) -> MicroBatcher:
    batcher = MicroBatcher(
        instant_predict,
        WindowQueue(64),
        max_batch_size=max_batch_size,
        observers=(events.observe,),
        on_idle=IdleHook(events.idle, IDLE_SECONDS),
    )
    batcher.start()
    return batcher


async def test_close_observes_every_batch_then_calls_the_idle_hook_last():
    events = Events()
    batcher = watched_batcher(events, max_batch_size=1)

    await asyncio.gather(*(batcher.submit(constant_windows(float(v))) for v in range(20)))
    await batcher.close()

    log = events.snapshot()
    assert sorted(v for v in log if v != "idle") == [float(v) for v in range(20)]
    assert log[-1] == "idle"


async def test_idle_hook_runs_once_traffic_pauses_and_not_while_it_flows():
    events = Events()
    batcher = watched_batcher(events, max_batch_size=4)
    await asyncio.sleep(0.3)
    assert events.snapshot() == []  # no traffic yet: nothing to apply, no wake-ups

    await batcher.submit(constant_windows(1.0))
    deadline = time.monotonic() + TIMEOUT
    while "idle" not in events.snapshot() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    paused = events.snapshot()
    await batcher.close()

    assert paused == [1.0, "idle"]  # one idle call per pause, not one per timeout


async def test_a_failing_observer_does_not_stop_the_next_batches(caplog):
    events = Events(fail_first_batch=True)
    batcher = MicroBatcher(
        instant_predict, WindowQueue(64), max_batch_size=1, observers=(events.observe,)
    )
    batcher.start()

    for v in range(3):
        await batcher.submit(constant_windows(float(v)))
    await batcher.close()

    assert events.snapshot() == [0.0, 1.0, 2.0]
    assert "observer blew up" in caplog.text
