"""``python -m service`` on SIGTERM: NOT_SERVING, refuse new RPCs with UNAVAILABLE, finish
in-flight ones, exit 0. Every call ends OK or UNAVAILABLE, under load too, and a client with
the retry config sees none of it.

The tests under load print their status counts (``pytest -s``)."""

from __future__ import annotations

import asyncio
import queue
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

import grpc
import numpy as np
import pytest
from service_process import ServiceProcess
from service_testkit import Call, Load, own_channel, read_stream, start_server, target_of

from service.api import pb, pb_grpc
from service.client import ForecastClient, forecasts_from_response, request_from_windows
from service.drain import DRAINING_MESSAGE, GRACE_OVER_MESSAGE
from training.faults import copy_version

pytestmark = pytest.mark.slow

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
GRACE_SECONDS = 10.0
# Windows per unary request; 16 per model call, so each request takes many model calls.
BIG_REQUEST = 2048
IN_FLIGHT_REQUESTS = 8
# Beyond the grace period, time the interpreter gets to exit after the drain.
EXIT_SLACK_SECONDS = 5.0
# Under load: clients, each with its own channel and connection, and how long they call
# before the signal.
LOAD_CLIENTS = 64
LOAD_SECONDS = 3.0
# A call that starts this long after SIGTERM is refused; a new one is refused this fast.
LATE_AFTER_SECONDS = 0.5
REFUSED_WITHIN_SECONDS = 1.0


@pytest.fixture
def service_process(trained_version, tmp_path):
    with ServiceProcess(
        trained_version,
        tmp_path / "service.log",
        "--grace-seconds",
        str(GRACE_SECONDS),
        "--max-batch-size",
        "16",
        "--batch-buckets",
        "1,4,16",
        "--max-windows-per-request",
        str(BIG_REQUEST),
        "--max-queue-windows",
        str(BIG_REQUEST * IN_FLIGHT_REQUESTS * 2),
    ) as process:
        process.wait_until_serving()
        yield process


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    details: str
    seconds: float  # how long the refused call took


def wait_until_new_rpcs_refused(target: str, timeout: float) -> Refusal:
    """Open a new channel per attempt until the draining server refuses a new RPC."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            started = time.monotonic()
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            except grpc.RpcError as error:
                return Refusal(error.code(), error.details() or "", time.monotonic() - started)
        time.sleep(0.02)
    raise AssertionError(f"new RPCs were still accepted {timeout}s after SIGTERM")


def test_sigterm_drains_in_flight_requests_and_exits_zero(service_process, windows):
    big = request_from_windows(np.resize(windows, (BIG_REQUEST, *windows.shape[1:])))
    small = request_from_windows(windows[:2])
    with grpc.insecure_channel(service_process.target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        # A stream that is provably in flight: its first answer has arrived.
        outgoing: queue.Queue = queue.Queue()
        outgoing.put(small)
        stream = stub.StreamForecast(iter(outgoing.get, None), timeout=60)
        first_streamed = next(stream)
        # Unary requests queued behind each other in the batcher; once the first one is
        # answered, the others have reached the server and wait for the model.
        answered_at: list[float] = []
        first_answered = threading.Event()

        def answered(_call) -> None:
            answered_at.append(time.monotonic())
            first_answered.set()

        unary = [stub.Forecast.future(big, timeout=60) for _ in range(IN_FLIGHT_REQUESTS)]
        for call in unary:
            call.add_done_callback(answered)
        assert first_answered.wait(timeout=60)

        service_process.terminate()
        signalled = time.monotonic()
        refused = wait_until_new_rpcs_refused(service_process.target, GRACE_SECONDS)
        # The stream opened before SIGTERM still gets answers to messages sent after it.
        outgoing.put(small)
        outgoing.put(None)
        rest_streamed = list(stream)
        answers = [f.result() for f in unary]

    exit_code = service_process.process.wait(
        timeout=max(0.0, signalled + GRACE_SECONDS - time.monotonic()) + EXIT_SLACK_SECONDS
    )

    assert refused.code == UNAVAILABLE, refused
    assert stream.code() == grpc.StatusCode.OK
    assert [len(r.predictions) for r in [first_streamed, *rest_streamed]] == [2, 2]
    assert all(len(a.predictions) == BIG_REQUEST for a in answers)
    assert max(answered_at) > signalled, "no unary request was still in flight at SIGTERM"
    assert all(np.isfinite(forecasts_from_response(a)).all() for a in answers)
    assert exit_code == 0
    stderr = service_process.stderr()
    assert "Traceback" not in stderr
    assert "shutdown requested: NOT_SERVING" in stderr
    assert "drained; exiting" in stderr


def test_sigterm_on_idle_server_exits_zero_promptly(service_process):
    service_process.terminate()

    assert service_process.process.wait(timeout=GRACE_SECONDS) == 0
    assert "Traceback" not in service_process.stderr()


# -------------------------------------------------------------------------------------------
# Under load: every call ends OK or UNAVAILABLE
# -------------------------------------------------------------------------------------------


def phase(call: Call, signalled: float) -> str:
    if call.ended < signalled:
        return "before"
    return "in flight" if call.started < signalled else "after"


def status_counts(calls: list[Call], signalled: float) -> dict[str, int]:
    """``{"phase code": count}``, phases relative to the signal: ended before it, in flight at
    it, started after it."""
    counts = Counter(f"{phase(c, signalled)} {c.code.name}" for c in calls)
    return dict(sorted(counts.items()))


def forecast_load(service: ServiceProcess, request: pb.ForecastRequest) -> Load:
    """LOAD_CLIENTS threads, each on a connection of its own, sending ``request`` back to back."""
    return Load(
        LOAD_CLIENTS,
        lambda: own_channel(service.target),
        lambda channel: pb_grpc.ForecastServiceStub(channel).Forecast(
            request, timeout=GRACE_SECONDS + EXIT_SLACK_SECONDS
        ),
    )


def loaded_service(
    trained_version, log_path, windows_per_call: int, workers: int = 1
) -> ServiceProcess:
    """Limits that refuse nothing: every client's call fits in one request and in the queue."""
    return ServiceProcess(
        trained_version,
        log_path,
        "--workers",
        str(workers),
        "--grace-seconds",
        str(GRACE_SECONDS),
        "--max-batch-size",
        "32",
        "--batch-buckets",
        "1,4,16,32",
        "--max-windows-per-request",
        str(windows_per_call),
        "--max-queue-windows",
        str(LOAD_CLIENTS * windows_per_call),
    )


@pytest.mark.parametrize(
    ("windows_per_call", "workers"),
    [(1, 1), (256, 1), (1, 2), (256, 2)],
    ids=["1-window", "256-windows", "1-window-2-workers", "256-windows-2-workers"],
)
def test_sigterm_under_load_ends_every_call_ok_or_unavailable(
    trained_version, tmp_path, windows, windows_per_call, workers
):
    """With ``--workers 2`` the supervisor gets the signal and every worker drains."""
    request = request_from_windows(np.resize(windows, (windows_per_call, *windows.shape[1:])))
    log_path = tmp_path / "service.log"
    with loaded_service(trained_version, log_path, windows_per_call, workers) as service:
        service.wait_until_serving()
        with forecast_load(service, request) as load:
            time.sleep(LOAD_SECONDS)
            service.terminate()
            signalled = time.monotonic()
            refused = wait_until_new_rpcs_refused(service.target, GRACE_SECONDS)
            exit_code = service.process.wait(timeout=GRACE_SECONDS + EXIT_SLACK_SECONDS)
            exited_after = time.monotonic() - signalled
            time.sleep(max(0.0, signalled + 2 * LATE_AFTER_SECONDS - time.monotonic()))
        stderr = service.stderr()

    counts = status_counts(load.calls, signalled)
    print(f"\n{windows_per_call} window(s) per call, {LOAD_CLIENTS} clients: {counts}")
    assert {c.code for c in load.calls} <= {OK, UNAVAILABLE}, counts
    assert counts.get("before OK", 0) >= LOAD_CLIENTS, counts
    assert counts.get("in flight OK", 0) >= 1, counts  # in-flight calls were answered
    # The server itself refused calls while it drained, before the process ended. (Latencies
    # of the load's own calls are not checked: once the process is gone, 64 threads calling
    # back to back into refused connections starve each other of the GIL for seconds.)
    assert any(c.details == DRAINING_MESSAGE for c in load.calls), counts
    late = [c for c in load.calls if c.started > signalled + LATE_AFTER_SECONDS]
    assert late, counts
    assert all(c.code == UNAVAILABLE for c in late), counts
    assert refused.code == UNAVAILABLE and refused.seconds < REFUSED_WITHIN_SECONDS, refused
    assert exit_code == 0 and exited_after < GRACE_SECONDS, exited_after
    assert "Traceback" not in stderr
    assert len(re.findall(r"service\.server .*drained; exiting", stderr)) == workers
    if workers > 1:
        assert "all workers drained; exiting" in stderr


def test_sigterm_ends_a_stream_still_open_when_the_grace_period_ends_unavailable(
    trained_version, tmp_path, windows
):
    grace = 2.0
    small = request_from_windows(windows[:2])
    with ServiceProcess(
        trained_version, tmp_path / "service.log", "--grace-seconds", str(grace)
    ) as service:
        service.wait_until_serving()
        with grpc.insecure_channel(service.target) as channel:
            outgoing: queue.Queue = queue.Queue()
            outgoing.put(small)
            stream = pb_grpc.ForecastServiceStub(channel).StreamForecast(
                iter(outgoing.get, None), timeout=60
            )
            first = next(stream)
            service.terminate()
            signalled = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                next(stream)  # the client never half-closes
            ended_after = time.monotonic() - signalled
            outgoing.put(None)
        exit_code = service.process.wait(timeout=grace + EXIT_SLACK_SECONDS)
        exited_after = time.monotonic() - signalled

    assert len(first.predictions) == 2
    # The drain ends it; the process exits right after, so the status it sent may not have
    # left before the connection closed ("Stream removed (Socket closed)"): UNAVAILABLE both.
    assert ended.value.code() == UNAVAILABLE, ended.value.details()
    assert ended_after < grace
    assert exit_code == 0 and exited_after < grace + EXIT_SLACK_SECONDS


def test_retry_config_hides_a_draining_replica_from_its_clients(trained_version, tmp_path, windows):
    """Two replicas; one drains and stops under load. Clients with the default retry config
    (round robin over both, retry on UNAVAILABLE) see no failure; clients that also spread
    their calls round robin, without retrying, do."""
    clients = 16
    request = request_from_windows(windows[:1])
    with (
        loaded_service(trained_version, tmp_path / "draining.log", 1) as draining,
        loaded_service(trained_version, tmp_path / "staying.log", 1) as staying,
    ):
        draining.wait_until_serving()
        staying.wait_until_serving()
        target = f"ipv4:{draining.target},{staying.target}"

        def round_robin_channel() -> grpc.Channel:
            return grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])

        with (
            Load(
                clients,
                lambda: ForecastClient(target, timeout=GRACE_SECONDS),
                lambda client: client.forecast_response(windows[:1]),
            ) as retrying,
            Load(
                clients,
                round_robin_channel,
                lambda channel: pb_grpc.ForecastServiceStub(channel).Forecast(
                    request, timeout=GRACE_SECONDS
                ),
            ) as plain,
        ):
            time.sleep(LOAD_SECONDS)
            draining.terminate()
            signalled = time.monotonic()
            exit_code = draining.process.wait(timeout=GRACE_SECONDS + EXIT_SLACK_SECONDS)
            time.sleep(LOAD_SECONDS)  # and on, against the replica left

    retried_counts = status_counts(retrying.calls, signalled)
    plain_counts = status_counts(plain.calls, signalled)
    print(f"\nwith the retry config: {retried_counts}\nwithout it: {plain_counts}")
    assert exit_code == 0
    assert {c.code for c in retrying.calls} == {OK}, retried_counts
    assert retried_counts.get("after OK", 0) >= clients, retried_counts
    # The drain did reach clients: those without retries saw its refusals.
    assert {c.code for c in plain.calls} == {OK, UNAVAILABLE}, plain_counts


async def test_draining_server_refuses_a_new_stream_and_serves_the_open_one(
    settings, artifacts, windows
):
    """In process: while a stream opened before the drain holds it open, a new stream gets
    UNAVAILABLE (once its client has finished sending: see ``auth.until_half_close``)."""
    small = request_from_windows(windows[:2])
    running = await start_server(replace(settings, batch_buckets=(1,), max_batch_size=1), artifacts)
    shutdown = None
    try:
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            opened = stub.StreamForecast()
            await opened.write(small)
            first = await opened.read()
            shutdown = asyncio.create_task(running.shutdown(GRACE_SECONDS))
            while not running.drain.draining:
                await asyncio.sleep(0.01)
            refused = stub.StreamForecast()
            await refused.write(small)
            await refused.done_writing()
            refused_responses, refusal = await read_stream(refused)
            await opened.write(small)
            await opened.done_writing()
            second = await opened.read()
            end = await opened.read()
            opened_code = await opened.code()
    finally:
        await (shutdown if shutdown is not None else running.shutdown(1.0))

    assert refused_responses == []
    assert refusal is not None and refusal.code() == UNAVAILABLE
    assert refusal.details() == DRAINING_MESSAGE
    assert [len(first.predictions), len(second.predictions)] == [2, 2]
    assert end is grpc.aio.EOF and opened_code == OK


async def test_stream_still_open_when_the_grace_period_ends_gets_unavailable(
    settings, artifacts, windows
):
    """In process, where the status surely leaves before the server stops."""
    grace = 1.0
    small = request_from_windows(windows[:2])
    running = await start_server(replace(settings, batch_buckets=(1,), max_batch_size=1), artifacts)
    shutdown = None
    try:
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            opened = pb_grpc.ForecastServiceStub(channel).StreamForecast()
            await opened.write(small)
            first = await opened.read()
            started = time.monotonic()
            shutdown = asyncio.create_task(running.shutdown(grace))
            await shutdown  # the client never half-closes
            code, details = await opened.code(), await opened.details()
            stopped_after = time.monotonic() - started
    finally:
        await (shutdown if shutdown is not None else running.shutdown(grace))

    assert len(first.predictions) == 2
    assert (code, details) == (UNAVAILABLE, GRACE_OVER_MESSAGE)
    assert stopped_after < grace


@pytest.mark.parametrize(
    "moment",
    [": loading and compiling in the background", ": shadow evaluation on the next"],
    ids=["while-compiling", "while-shadowing"],
)
def test_sigterm_during_a_promotion_ends_every_call_ok_or_unavailable(
    trained_version, tmp_path, windows, moment
):
    """A new version is published into the watched base directory under load; SIGTERM arrives
    while it compiles, or while it runs in the shadow of the serving one."""
    base = tmp_path / "base"
    shutil.copytree(trained_version, base / trained_version.name)
    request = request_from_windows(windows[:1])
    with ServiceProcess(
        base,
        tmp_path / "service.log",
        "--grace-seconds",
        str(GRACE_SECONDS),
        "--poll-seconds",
        "0.2",
        "--shadow-windows",
        "100000",  # the verdict never comes first
    ) as service:
        service.wait_until_serving()
        with forecast_load(service, request) as load:
            time.sleep(LOAD_SECONDS)
            candidate = copy_version(trained_version, base)
            deadline = time.monotonic() + 120
            while f"candidate {candidate.name}{moment}" not in service.stderr():
                assert time.monotonic() < deadline, service.stderr()[-2000:]
                time.sleep(0.02)
            service.terminate()
            signalled = time.monotonic()
            exit_code = service.process.wait(timeout=GRACE_SECONDS + EXIT_SLACK_SECONDS)
            exited_after = time.monotonic() - signalled
        stderr = service.stderr()

    counts = status_counts(load.calls, signalled)
    print(f"\nSIGTERM {moment!r}, {LOAD_CLIENTS} clients: {counts}")
    assert {c.code for c in load.calls} <= {OK, UNAVAILABLE}, counts
    assert counts.get("before OK", 0) >= LOAD_CLIENTS, counts
    assert exit_code == 0 and exited_after < GRACE_SECONDS, exited_after
    assert "Traceback" not in stderr
    assert "drained; exiting" in stderr
