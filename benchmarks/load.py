"""The load generator: several client processes, each driving ``grpc.aio`` calls concurrently.

A :class:`ClientPool` starts its processes once (spawn) and reuses them for every point. For a
point, each process gets a :class:`Job`: a target, a mode and its share of the in-flight
requests ("lanes"). All processes start at the same wall-clock instant, run a warm-up, then a
fixed measurement window. Only calls that *complete* inside the window count; a call's latency
is measured on the client from just before the call to its response. Raw latencies come back to
the orchestrator, so percentiles are exact over all processes.

Payloads are pre-serialized (identity serializer), so every system receives the same bytes and
the clients spend their CPU on the transport, not on building protobufs. A sample of responses
(the first of each lane, then every ``VALIDATE_EVERY``-th) is parsed and checked; a wrong
prediction count, or an Open Inference Protocol answer without a finite ``forecast`` tensor of
``[n, horizon]`` FP32 in ``raw_output_contents``, counts as an error (``BAD_RESPONSE``).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import resource
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.workload import FORECAST_V1, MODES, SeriesPayloads, infer_forecasts, payloads

FORECAST = "/forecast.v1.ForecastService/Forecast"
STREAM_FORECAST = "/forecast.v1.ForecastService/StreamForecast"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
VALIDATE_EVERY = 64
# Calls still running this long after the window closes are cancelled (they never count).
DRAIN_SECONDS = 5.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Job:
    """One client process's share of one measurement point."""

    target: str
    mode: str
    lanes: tuple[int, ...]  # in-flight depth per lane: 1 per unary lane, >= 1 per stream
    start_at: float  # wall clock (time.time()), the same for every process
    warmup: float
    duration: float
    timeout: float
    first_payload: int  # where this process starts cycling through the payloads


@dataclass
class ClientResult:
    latencies: np.ndarray  # seconds, one per successful call completed in the window
    completions: np.ndarray  # seconds since the window opened, one per successful call
    windows: int
    errors: dict[str, int]
    cpu_seconds: float  # this client process's CPU time during the window


@dataclass
class _Recorder:
    warm_end: float
    end: float
    windows_per_request: int
    latencies: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    def ok(self, started: float, finished: float) -> None:
        if self.warm_end <= finished < self.end:
            self.latencies.append(finished - started)
            self.completions.append(finished - self.warm_end)

    def error(self, code: str, finished: float, count: int = 1) -> None:
        if self.warm_end <= finished < self.end:
            self.errors[code] += count


def _valid(response: bytes, expected_windows: int, horizon: int) -> bool:
    from service.api import pb

    message = pb.ForecastResponse.FromString(response)
    return len(message.predictions) == expected_windows and all(
        len(p.values) == horizon for p in message.predictions
    )


def _valid_infer(response: bytes, expected_windows: int, horizon: int) -> bool:
    from service.api import oip_pb

    forecasts = infer_forecasts(oip_pb.ModelInferResponse.FromString(response))
    return (
        forecasts is not None
        and forecasts.shape == (expected_windows, horizon)
        and bool(np.isfinite(forecasts).all())
    )


async def _unary_lane(
    call, requests, first, rec: _Recorder, horizon: int, timeout: float, valid=_valid
):
    import grpc

    i = first
    n = len(requests)
    while time.perf_counter() < rec.end:
        payload = requests[i % n]
        started = time.perf_counter()
        try:
            response = await call(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            rec.error(exc.code().name, time.perf_counter())
            continue
        finished = time.perf_counter()
        if (i - first) % VALIDATE_EVERY == 0 and not valid(
            response, rec.windows_per_request, horizon
        ):
            rec.error("BAD_RESPONSE", finished)
        else:
            rec.ok(started, finished)
        i += 1


async def _stream_lane(method, requests, first, depth, rec: _Recorder, horizon: int, timeout):
    """One StreamForecast call at a time, with up to ``depth`` messages in flight on it;
    responses come in order, so each is matched to the oldest unanswered send time."""
    import grpc

    i = first
    n = len(requests)
    while time.perf_counter() < rec.end:
        call = method(timeout=rec.end - time.perf_counter() + timeout)
        sent: deque[float] = deque()
        slots = asyncio.Semaphore(depth)

        async def write(call=call, sent=sent, slots=slots) -> None:
            nonlocal i
            try:
                while True:
                    await slots.acquire()
                    if time.perf_counter() >= rec.end:
                        break
                    sent.append(time.perf_counter())
                    await call.write(requests[i % n])
                    i += 1
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the reader sees the call's status

        writer = asyncio.create_task(write())
        received = 0
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                finished = time.perf_counter()
                started = sent.popleft()
                if received % VALIDATE_EVERY == 0 and not _valid(
                    response, rec.windows_per_request, horizon
                ):
                    rec.error("BAD_RESPONSE", finished)
                else:
                    rec.ok(started, finished)
                received += 1
                slots.release()
        except grpc.aio.AioRpcError as exc:
            rec.error(exc.code().name, time.perf_counter(), max(1, len(sent)))
        finally:
            writer.cancel()
            call.cancel()


async def _drive(job: Job, requests: list[bytes] | SeriesPayloads, horizon: int) -> ClientResult:
    import grpc

    mode = MODES[job.mode]
    # Same clock in every process: translate the shared wall-clock start to perf_counter.
    start = time.perf_counter() + (job.start_at - time.time())
    rec = _Recorder(
        warm_end=start + job.warmup,
        end=start + job.warmup + job.duration,
        windows_per_request=mode.windows_per_request,
    )
    channel = grpc.aio.insecure_channel(job.target, options=CHANNEL_OPTIONS)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        call: Any  # bytes in, bytes out
        valid = _valid if mode.protocol == FORECAST_V1 else _valid_infer
        if mode.rpc == "stream":
            call = channel.stream_stream(STREAM_FORECAST)
        else:
            call = channel.unary_unary(FORECAST if mode.protocol == FORECAST_V1 else MODEL_INFER)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        lanes = []
        for k, depth in enumerate(job.lanes):
            first = job.first_payload + 7919 * k
            # With series ids, each lane sends series of its own (named by process and lane).
            own: Any = (
                requests.lane(f"{job.first_payload}-{k}")
                if isinstance(requests, SeriesPayloads)
                else requests
            )
            if mode.rpc == "unary":
                lanes.append(_unary_lane(call, own, first, rec, horizon, job.timeout, valid))
            else:
                lanes.append(_stream_lane(call, own, first, depth, rec, horizon, job.timeout))
        tasks = [asyncio.ensure_future(lane) for lane in lanes]
        await asyncio.sleep(max(0.0, rec.warm_end - time.perf_counter()))
        cpu_start = _cpu_seconds()
        await asyncio.sleep(max(0.0, rec.end - time.perf_counter()))
        cpu_seconds = _cpu_seconds() - cpu_start
        _done, pending = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await channel.close()
    return ClientResult(
        latencies=np.asarray(rec.latencies, dtype=np.float64),
        completions=np.asarray(rec.completions, dtype=np.float64),
        windows=len(rec.latencies) * mode.windows_per_request,
        errors=dict(rec.errors),
        cpu_seconds=cpu_seconds,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _client_main(
    conn, windows: np.ndarray, horizon: int, cpus: tuple[int, ...] | None, series: bool
) -> None:
    """A client process: build each mode's payloads once, then run jobs until told to stop.
    With ``series``, every forecast.v1 window carries a series id and continues its series' last
    window (see :class:`benchmarks.workload.SeriesPayloads`); there are no Open Inference
    Protocol payloads then."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    requests: dict[str, list[bytes] | SeriesPayloads] = {
        name: SeriesPayloads(windows, mode.windows_per_request)
        if series
        else payloads(windows, mode.windows_per_request, mode.protocol)
        for name, mode in MODES.items()
        if not (series and mode.protocol != FORECAST_V1)
    }
    loop = asyncio.new_event_loop()
    conn.send("ready")
    try:
        while (job := conn.recv()) is not None:
            try:
                conn.send(loop.run_until_complete(_drive(job, requests[job.mode], horizon)))
            except Exception as exc:  # noqa: BLE001 - report to the orchestrator, keep serving
                conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        loop.close()


def plan(rpc: str, concurrency: int, processes: int, stream_depth: int) -> list[tuple[int, ...]]:
    """Spread ``concurrency`` in-flight requests over client processes, as lanes per process.

    Unary (Forecast and ModelInfer): one lane per in-flight request. Stream:
    ``ceil(concurrency / stream_depth)`` streams (at least one per used process), the in-flight
    messages shared evenly between them.
    """
    if rpc == "unary":
        lanes = [1] * concurrency
    else:
        streams = max(math.ceil(concurrency / stream_depth), min(processes, concurrency))
        lanes = [
            concurrency // streams + (1 if i < concurrency % streams else 0) for i in range(streams)
        ]
    used = min(processes, len(lanes))
    return [tuple(lanes[p::used]) for p in range(used)]


@dataclass
class PointResult:
    """Every client process's results of one point, merged."""

    latencies: np.ndarray
    completions: np.ndarray
    windows: int
    errors: dict[str, int]
    client_cpu_seconds: float
    processes: int
    lanes: int


class ClientError(RuntimeError):
    pass


class ClientPool:
    """Long-lived client processes (spawned once, reused for every point). With ``series``,
    every window sent carries a series id (see :class:`benchmarks.workload.SeriesPayloads`)."""

    def __init__(
        self,
        processes: int,
        windows: np.ndarray,
        horizon: int,
        *,
        cpus: tuple[int, ...] | None = None,
        series: bool = False,
    ):
        ctx = mp.get_context("spawn")
        self._conns = []
        self._procs = []
        self._active = 0
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_client_main, args=(child, windows, horizon, cpus, series), daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            if not conn.poll(120) or conn.recv() != "ready":
                self.close()
                raise ClientError("a client process did not start")

    @property
    def size(self) -> int:
        return len(self._procs)

    def start(
        self,
        target: str,
        mode: str,
        concurrency: int,
        *,
        warmup: float,
        duration: float,
        timeout: float,
        stream_depth: int,
    ) -> tuple[float, int, int]:
        """Spread ``concurrency`` over the processes and send the jobs.

        Returns (wall-clock start, processes used, lanes)."""
        shares = plan(MODES[mode].rpc, concurrency, self.size, stream_depth)
        start_at = self.start_jobs(
            target,
            [(mode, lanes) for lanes in shares],
            warmup=warmup,
            duration=duration,
            timeout=timeout,
        )
        return start_at, len(shares), sum(len(lanes) for lanes in shares)

    def start_jobs(
        self,
        target: str,
        shares: list[tuple[str, tuple[int, ...]]],
        *,
        warmup: float,
        duration: float,
        timeout: float,
        lead: float = 0.25,
    ) -> float:
        """One (mode, lanes) job per process, all starting ``lead`` seconds from now."""
        if len(shares) > self.size:
            raise ValueError(f"{len(shares)} jobs for {self.size} client processes")
        start_at = time.time() + lead
        for p, (mode, lanes) in enumerate(shares):
            self._conns[p].send(
                Job(target, mode, lanes, start_at, warmup, duration, timeout, 104_729 * p)
            )
        self._active = len(shares)
        return start_at

    def collect_each(self) -> list[ClientResult]:
        """Each active process's result, in process order."""
        results = []
        for conn in self._conns[: self._active]:
            if not conn.poll(DRAIN_SECONDS + 120):
                raise ClientError("a client process did not report back")
            result = conn.recv()
            if isinstance(result, str):
                raise ClientError(f"client process failed: {result}")
            results.append(result)
        return results

    def collect(self, processes: int, lanes: int) -> PointResult:
        """Every active process's result, merged."""
        results = self.collect_each()
        errors: Counter = Counter()
        for r in results:
            errors.update(r.errors)
        return PointResult(
            latencies=np.concatenate([r.latencies for r in results]),
            completions=np.concatenate([r.completions for r in results]),
            windows=sum(r.windows for r in results),
            errors=dict(errors),
            client_cpu_seconds=sum(r.cpu_seconds for r in results),
            processes=processes,
            lanes=lanes,
        )

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
