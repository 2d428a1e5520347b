"""Sustained mixed load, overload and draining under load, against a real service process.

The soak runs ``FORECAST_SOAK_SECONDS`` (default 60) of many concurrent clients: good and bad
requests, unary and streaming, tiny deadlines and cancellations. Set the variable higher for a
longer run on demand. Each test prints its figures (they feed the README's reliability table).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_process import ServiceProcess

from service.api import pb, pb_grpc
from service.client import forecasts_from_response, request_from_windows
from training.predict import predict_windows

pytestmark = pytest.mark.slow

OK = grpc.StatusCode.OK
SOAK_SECONDS = float(os.environ.get("FORECAST_SOAK_SECONDS", "60"))
DRAIN_CLIENTS = 64  # each keeps one 256-window request in flight


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests_total(values, method: str, code: str) -> float:
    return values[("forecast_requests_total", (("code", code), ("method", method)))]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _unhandled(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "Traceback" in ln or "unexpected error" in ln]


@pytest.fixture(scope="module")
def offline(artifacts, windows):
    forecasts, _ = predict_windows(artifacts.model, artifacts.transform(), windows)
    return forecasts


@dataclass
class Tally:
    codes: Counter = field(default_factory=Counter)  # (category, code name) -> count
    unexpected: list = field(default_factory=list)
    wrong_answers: int = 0
    checked_answers: int = 0

    def add(self, category: str, code: grpc.StatusCode, allowed: set) -> None:
        self.codes[(category, code.name)] += 1
        if code not in allowed:
            self.unexpected.append((category, code.name))

    def count(self, category: str, code: str) -> int:
        return self.codes[(category, code)]


def test_mixed_load_soak(tmp_path, trained_version, windows, offline):
    flags = (
        "--max-batch-size",
        "32",
        "--batch-buckets",
        "1,4,16,32",
        "--max-queue-windows",
        "1024",
        "--max-windows-per-request",
        "64",
    )
    with ServiceProcess(trained_version, tmp_path / "soak.log", *flags, metrics=True) as service:
        service.wait_until_serving()
        metrics_port = service.metrics_port
        tally, samples = asyncio.run(
            _soak(service.target, metrics_port, service.process.pid, windows, offline)
        )
        time.sleep(1.0)  # the last batches' metrics are recorded just after their responses
        final = _scrape(metrics_port)
        stderr = service.stderr()

    assert not tally.unexpected, Counter(tally.unexpected)
    assert tally.wrong_answers == 0 and tally.checked_answers > 100
    # Server-side counters agree with what the clients saw.
    assert _requests_total(final, "Forecast", "INVALID_ARGUMENT") == tally.count(
        "bad", "INVALID_ARGUMENT"
    )
    assert _requests_total(final, "GetModelInfo", "OK") == tally.count("info", "OK")
    assert _requests_total(final, "StreamForecast", "OK") == tally.count("stream", "OK")
    plain_ok = tally.count("good", "OK")
    racy = sum(n for (cat, _), n in tally.codes.items() if cat in ("deadline", "cancel"))
    assert plain_ok <= _requests_total(final, "Forecast", "OK") <= plain_ok + racy
    # The queue stayed bounded and memory did not grow.
    assert max(s["queue"] for s in samples) <= 1024
    baseline = samples[len(samples) // 4]["rss"]
    growth = samples[-1]["rss"] / baseline - 1
    assert growth < 0.20, [s["rss"] for s in samples]
    assert not _unhandled(stderr)
    total = sum(tally.codes.values())
    print(
        f"\nsoak: {total} calls in {SOAK_SECONDS:.0f}s at concurrency {SOAK_CONCURRENCY}, "
        f"{len(tally.unexpected)} unexpected codes, {tally.checked_answers} answers checked "
        f"against offline predictions, RSS {growth:+.1%} after warm-up, max queue "
        f"{max(s['queue'] for s in samples):.0f}; codes {dict(tally.codes)}"
    )


SOAK_CONCURRENCY = 24


async def _soak(target, metrics_port, pid, windows, offline):
    tally = Tally()
    samples = []
    end = time.monotonic() + SOAK_SECONDS
    rng = random.Random(7)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    bad_requests = [
        pb.ForecastRequest(),
        request_from_windows(
            np.where(np.arange(windows[0].size) == 3, np.nan, windows[0].ravel()).reshape(
                1, *windows[0].shape
            )
        ),
        pb.ForecastRequest(windows=[pb.Window(values=[1.0, 2.0])]),
        request_from_windows(np.repeat(windows[:1], 65, axis=0)),
    ]

    def check(picked, response) -> None:
        got = forecasts_from_response(response)
        tally.checked_answers += 1
        if not np.allclose(got, offline[picked], rtol=1e-4, atol=1e-3):
            tally.wrong_answers += 1

    async def client(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.ForecastServiceStub(channel)
        while time.monotonic() < end:
            roll = rng.random()
            picked = np.array(rng.sample(range(len(windows)), rng.randint(1, 16)))
            try:
                if roll < 0.40:
                    response = await stub.Forecast(request_from_windows(windows[picked]))
                    check(picked, response)
                    tally.add("good", OK, {OK})
                elif roll < 0.60:
                    await stub.Forecast(rng.choice(bad_requests))
                    tally.add("bad", OK, {invalid})
                elif roll < 0.75:
                    messages = [
                        picked[rng.randint(0, len(picked) - 1) :][:4]
                        for _ in range(rng.randint(2, 5))
                    ]
                    call = stub.StreamForecast(
                        iter([request_from_windows(windows[m]) for m in messages])
                    )
                    answers = [r async for r in call]
                    for m, r in zip(messages, answers, strict=True):
                        check(m, r)
                    tally.add("stream", OK, {OK})
                elif roll < 0.85:
                    await stub.Forecast(request_from_windows(windows[picked]), timeout=0.0005)
                    tally.add("deadline", OK, {OK, grpc.StatusCode.DEADLINE_EXCEEDED})
                elif roll < 0.95:
                    call = stub.Forecast(request_from_windows(windows[picked]))
                    await asyncio.sleep(rng.random() * 0.002)
                    call.cancel()
                    try:
                        await call
                        tally.add("cancel", OK, {OK, grpc.StatusCode.CANCELLED})
                    except asyncio.CancelledError:
                        tally.add(
                            "cancel", grpc.StatusCode.CANCELLED, {OK, grpc.StatusCode.CANCELLED}
                        )
                else:
                    await stub.GetModelInfo(pb.GetModelInfoRequest())
                    tally.add("info", OK, {OK})
            except grpc.aio.AioRpcError as exc:
                category = (
                    "good"
                    if roll < 0.40
                    else "bad"
                    if roll < 0.60
                    else "stream"
                    if roll < 0.75
                    else "deadline"
                    if roll < 0.85
                    else "cancel"
                    if roll < 0.95
                    else "info"
                )
                allowed = {
                    "bad": {invalid},
                    "deadline": {OK, grpc.StatusCode.DEADLINE_EXCEEDED},
                    "cancel": {OK, grpc.StatusCode.CANCELLED},
                }.get(category, {OK})
                tally.add(category, exc.code(), allowed)

    async def sampler() -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < end:
            values = await loop.run_in_executor(None, _scrape, metrics_port)
            samples.append(
                {
                    "t": time.monotonic(),
                    "rss": _rss_bytes(pid),
                    "queue": values[("forecast_queue_depth", ())],
                }
            )
            await asyncio.sleep(2.0)

    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    try:
        await asyncio.gather(sampler(), *(client(channels[i % 4]) for i in range(SOAK_CONCURRENCY)))
    finally:
        for channel in channels:
            await channel.close()
    return tally, samples


def test_overload_is_refused_fast_and_recovers(tmp_path, trained_version, windows):
    flags = (
        "--max-batch-size",
        "16",
        "--batch-buckets",
        "1,4,16",
        "--max-queue-windows",
        "64",
        "--max-windows-per-request",
        "16",
    )
    with ServiceProcess(trained_version, tmp_path / "overload.log", *flags) as service:
        service.wait_until_serving()
        results, after = asyncio.run(_overload(service.target, windows))
        stderr = service.stderr()

    codes = Counter(code for code, _ in results)
    accepted = sorted(t for code, t in results if code == OK)
    refused = sorted(t for code, t in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert set(codes) <= {OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert refused and accepted, codes
    assert np.median(refused) < np.median(accepted)  # refusing is faster than serving
    assert accepted[-1] < 2.0  # the bounded queue bounds the wait of accepted requests
    assert after == [OK] * 20  # recovered by itself once the load dropped
    assert not _unhandled(stderr)
    print(
        f"\noverload: {len(results)} calls, {len(refused)} RESOURCE_EXHAUSTED "
        f"(median {np.median(refused) * 1e3:.1f} ms), {len(accepted)} OK (median "
        f"{np.median(accepted) * 1e3:.1f} ms, max {accepted[-1] * 1e3:.0f} ms); "
        f"all 20 calls after the burst OK"
    )


async def _overload(target, windows):
    results = []
    end = time.monotonic() + 8.0
    request = request_from_windows(windows[:16])

    async def client(stub):
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                await stub.Forecast(request)
                results.append((OK, time.perf_counter() - started))
            except grpc.aio.AioRpcError as exc:
                results.append((exc.code(), time.perf_counter() - started))

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        await asyncio.gather(*(client(stub) for _ in range(64)))
        await asyncio.sleep(0.5)
        after = []
        for _ in range(20):
            try:
                await stub.Forecast(request_from_windows(windows[:1]))
                after.append(OK)
            except grpc.aio.AioRpcError as exc:
                after.append(exc.code())
    return results, after


def test_sigterm_under_load_completes_every_accepted_rpc(tmp_path, trained_version, windows):
    grace = 10.0
    with ServiceProcess(
        trained_version,
        tmp_path / "drain.log",
        "--grace-seconds",
        str(grace),
        "--max-batch-size",
        "32",
        "--batch-buckets",
        "1,4,16,32",
        "--max-queue-windows",
        str(DRAIN_CLIENTS * 256),
        "--max-windows-per-request",
        "256",
    ) as service:
        service.wait_until_serving()
        calls, sigterm_at, exit_code, exit_after = asyncio.run(_drain(service, windows, grace))
        stderr = service.stderr()

    # Served or refused as UNAVAILABLE: none cancelled, not even one that reached the server
    # in the instant its shutdown started (see service/drain.py).
    codes = Counter(c[2] for c in calls)
    assert set(codes) <= {OK, grpc.StatusCode.UNAVAILABLE}, codes
    # Started well before the signal and still running at it: certainly accepted by the server
    # (each call queues 256 windows behind 63 others, so it stays in flight for ~0.4 s).
    in_flight = [c for c in calls if c[0] < sigterm_at - 0.2 and c[1] > sigterm_at]
    assert in_flight, "no request was in flight at SIGTERM"
    assert all(code == OK for _, _, code in in_flight)
    late = [c for c in calls if c[0] > sigterm_at + 0.5]
    assert late and all(code == grpc.StatusCode.UNAVAILABLE for _, _, code in late)
    assert exit_code == 0 and exit_after < grace
    assert not _unhandled(stderr)
    print(
        f"\ndrain: SIGTERM with {len(in_flight)} RPCs in flight, {len(in_flight)} completed "
        f"OK; {len(late)} later calls UNAVAILABLE; exit 0 after {exit_after:.2f}s "
        f"(grace {grace:.0f}s)"
    )


async def _drain(service, windows, grace):
    calls = []  # (start, end, code)
    stop_at = None
    request = request_from_windows(np.resize(windows, (256, *windows.shape[1:])))

    async def client(stub):
        while stop_at is None or time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                await stub.Forecast(request, timeout=grace + 5)
                code = OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            calls.append((started, time.monotonic(), code))
            if code == grpc.StatusCode.UNAVAILABLE:
                await asyncio.sleep(0.05)

    async with grpc.aio.insecure_channel(service.target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        tasks = [asyncio.create_task(client(stub)) for _ in range(DRAIN_CLIENTS)]
        await asyncio.sleep(3.0)
        sigterm_at = time.monotonic()
        service.terminate()
        stop_at = sigterm_at + 2.0
        loop = asyncio.get_running_loop()
        exit_code = await loop.run_in_executor(None, service.process.wait, grace + 10)
        exit_after = time.monotonic() - sigterm_at
        await asyncio.gather(*tasks)
    return calls, sigterm_at, exit_code, exit_after
