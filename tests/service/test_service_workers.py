"""``python -m service --workers 2``: two serving processes on one port behave as one instance.

Each test drives a real supervisor and its workers over loopback, every client on a connection
of its own (the kernel spreads connections over the workers, not calls). The workers' private
``/metrics`` endpoints are read from the shared state directory the supervisor logs, to check
the instance's endpoint against them.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from service_process import ServiceProcess, run_service, service_lines
from service_testkit import Load, own_channel

from benchmarks.workload import held_out
from monitoring.workers import KNOWN_GAUGES
from service.api import SERVICE_NAME, pb, pb_grpc
from service.client import request_from_windows
from service.workers import WorkerState, read_states
from training.artifacts import load_artifacts
from training.faults import copy_version, zero_head

pytestmark = pytest.mark.slow

WORKERS = "2"
TIMEOUT_S = 120.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int | None) -> Samples:
    assert port is not None, "metrics port not known"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), math.nan)


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels), v in samples.items() if n == name and v > 0]


def wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def worker_states(service: ServiceProcess) -> dict[int, WorkerState]:
    match = re.search(r"shared state in (\S+)", service.stderr())
    assert match, service.stderr()[-2000:]
    return read_states(Path(match.group(1)))


def per_worker(service: ServiceProcess) -> dict[int, Samples]:
    return {i: scrape(s.metrics_port) for i, s in sorted(worker_states(service).items())}


def workers_service(artifacts: Path, log: Path, *flags: str) -> ServiceProcess:
    return ServiceProcess(artifacts, log, "--workers", WORKERS, *flags, metrics=True)


@pytest.fixture(scope="module")
def windows(trained_version) -> np.ndarray:
    return held_out(load_artifacts(trained_version).manifest)


def send(target: str, windows: np.ndarray, per_request: int, *, series: str = "") -> int:
    """Send ``windows`` in requests of ``per_request`` on one new connection; the requests."""
    with own_channel(target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        count = 0
        for start in range(0, len(windows), per_request):
            stub.Forecast(request_from_windows(windows[start : start + per_request]), timeout=30)
            count += 1
    return count


def test_two_workers_serve_one_port_behind_one_metrics_endpoint(trained_version, tmp_path, windows):
    with workers_service(trained_version, tmp_path / "service.log") as service:
        service.wait_until_serving()
        states = worker_states(service)
        assert sorted(states) == [0, 1]
        assert len({s.pid for s in states.values()}) == 2
        assert {s.port for s in states.values()} == {service.port}

        clients, per_client, per_request = 16, 40, 4
        requests = 0
        threads = []
        counts: list[int] = []

        def client(index: int) -> None:
            part = np.resize(np.roll(windows, -index * 7, axis=0), (per_client, *windows.shape[1:]))
            counts.append(send(service.target, part, per_request))

        for i in range(clients):
            threads.append(threading.Thread(target=client, args=(i,)))
            threads[-1].start()
        for thread in threads:
            thread.join()
        requests = sum(counts)
        sent = clients * per_client
        instance = wait_for(
            lambda: (
                (s := scrape(service.metrics_port))
                and value(s, "forecast_monitored_windows_total") == sent
                and s
            ),
            "the detectors saw every window",
        )
        workers = per_worker(service)

        # Each worker served part of the traffic; the instance's counters are their sums.
        windows_each = [value(w, "forecast_windows_total") for w in workers.values()]
        assert all(n > 0 for n in windows_each), windows_each
        assert value(instance, "forecast_windows_total") == sum(windows_each) == sent
        ok = {"method": "Forecast", "code": "OK"}
        assert value(instance, "forecast_requests_total", **ok) == requests
        assert requests == sum(value(w, "forecast_requests_total", **ok) for w in workers.values())
        count = "forecast_request_duration_seconds_count"
        assert value(instance, count, method="Forecast") == requests
        for bucket in ("0.005", "0.05", "+Inf"):
            name, labels = "forecast_request_duration_seconds_bucket", {"le": bucket}
            assert value(instance, name, method="Forecast", **labels) == sum(
                value(w, name, method="Forecast", **labels) for w in workers.values()
            )
        assert value(instance, "forecast_batch_size_count") == sum(
            value(w, "forecast_batch_size_count") for w in workers.values()
        )
        assert value(instance, "forecast_workers", state="warm") == 2
        assert value(instance, "forecast_worker_restarts_total") == 0
        assert len(labelled(instance, "forecast_model_info")) == 1
        # Every gauge a worker exports has a rule for how workers combine.
        gauges = {
            f.name
            for f in text_string_to_metric_families(
                urllib.request.urlopen(
                    f"http://127.0.0.1:{states[0].metrics_port}/metrics", timeout=10
                )
                .read()
                .decode()
            )
            if f.type == "gauge" and not f.name.endswith("_created")
        }
        assert gauges <= KNOWN_GAUGES, gauges - KNOWN_GAUGES

        # A worker that dies is started again. Scraped all along, the instance's counters keep
        # exactly what both workers counted: no dip while it restarts, no double count after.
        os.kill(states[1].pid, signal.SIGKILL)
        seen: list[tuple[float, float, float]] = []

        def restarted_and_warm() -> bool:
            s = scrape(service.metrics_port)
            seen.append(
                (
                    value(s, "forecast_windows_total"),
                    value(s, "forecast_requests_total", **ok),
                    value(s, "forecast_request_duration_seconds_count", method="Forecast"),
                )
            )
            restarted = value(s, "forecast_worker_restarts_total") == 1
            return restarted and value(s, "forecast_workers", state="warm") == 2

        wait_for(restarted_and_warm, "the supervisor started the worker again and it is warm")
        assert len(seen) > 3
        assert set(seen) == {(sent, requests, requests)}, sorted(set(seen))
        service.wait_until_serving()
        assert worker_states(service)[1].pid != states[1].pid
        requests_after = send(service.target, windows[:8], 4)
        wait_for(
            lambda: value(scrape(service.metrics_port), "forecast_windows_total") == sent + 8,
            "the new windows are counted once",
        )
        after = scrape(service.metrics_port)
        assert value(after, "forecast_requests_total", **ok) == requests + requests_after
        service.terminate()
        assert service.process.wait(timeout=60) == 0
    assert "Traceback" not in service.stderr()


def health_of(target: str, name: str) -> str:
    with own_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_collapse_and_drift_on_one_worker_are_the_instances(trained_version, tmp_path, windows):
    """A collapsed model (zeroed output head) with --on-collapse unready. 64 windows on one
    connection reach one worker: the instance reports its collapse and every connection's
    health turns NOT_SERVING. Then 256 windows scaled x10 raise the drift flag."""
    broken = zero_head(trained_version, tmp_path / "broken")
    with workers_service(broken, tmp_path / "service.log", "--on-collapse", "unready") as service:
        service.wait_until_serving()
        send(service.target, windows[:64], 8)
        instance = wait_for(
            lambda: (
                (s := scrape(service.metrics_port))
                and value(s, "forecast_monitored_windows_total") == 64
                and value(s, "forecast_output_collapsed") == 1
                and s
            ),
            "the instance reports the collapse, all 64 windows seen",
            timeout=10,
        )
        workers = per_worker(service)
        seen = {i: value(w, "forecast_monitored_windows_total") for i, w in workers.items()}
        assert sorted(seen.values()) == [0, 64], seen  # one worker saw all 64 windows
        quiet = next(i for i, n in seen.items() if n == 0)
        assert value(workers[quiet], "forecast_output_collapsed") == 0
        assert value(instance, "forecast_collapse_events_total") == 1
        # Health on fresh connections, whichever worker they reach.
        wait_for(
            lambda: all(
                health_of(service.target, SERVICE_NAME) == "NOT_SERVING" for _ in range(16)
            ),
            "every worker reports the forecast service NOT_SERVING",
            timeout=10,
        )
        assert {health_of(service.target, "") for _ in range(16)} == {"SERVING"}

        features = load_artifacts(trained_version).feature_names
        send(service.target, windows[:256] * 10.0, 16)
        drifted = wait_for(
            lambda: [
                f
                for f in features
                if value(scrape(service.metrics_port), "forecast_input_drifted", feature=f) == 1
            ],
            "the instance reports drift",
            timeout=10,
        )
        assert drifted
        service.terminate()
        assert service.process.wait(timeout=60) == 0


def test_100k_healthy_windows_raise_no_alarm_on_any_worker(trained_version, tmp_path, windows):
    clients, per_request = 8, 256
    per_client = 100_352 // clients  # 392 requests of 256 windows in all
    with workers_service(trained_version, tmp_path / "service.log") as service:
        service.wait_until_serving()
        threads = []
        for index in range(clients):
            part = np.resize(
                np.roll(windows, -index * 211, axis=0), (per_client, *windows.shape[1:])
            )
            threads.append(threading.Thread(target=send, args=(service.target, part, per_request)))
            threads[-1].start()
        for thread in threads:
            thread.join()
        instance = wait_for(
            lambda: (
                (s := scrape(service.metrics_port))
                and value(s, "forecast_monitored_windows_total") == clients * per_client
                and s
            ),
            "the detectors saw every window",
        )
        workers = per_worker(service)
        service.terminate()
        assert service.process.wait(timeout=60) == 0
    seen = [value(w, "forecast_monitored_windows_total") for w in workers.values()]
    assert all(n > 0 for n in seen), seen
    assert value(instance, "forecast_collapse_events_total") == 0
    assert value(instance, "forecast_output_collapsed") == 0
    assert not labelled(instance, "forecast_input_drifted")


def served_versions(service: ServiceProcess) -> set[str]:
    return {
        labels["version"]
        for labels in labelled(scrape(service.metrics_port), "forecast_model_info")
    }


def test_new_versions_and_rollback_reach_every_worker(trained_version, tmp_path, windows):
    base = tmp_path / "base"
    first = base / trained_version.name
    shutil.copytree(trained_version, first)
    with workers_service(base, tmp_path / "service.log", "--poll-seconds", "0.5") as service:
        service.wait_until_serving()
        request = request_from_windows(windows[:1])
        with Load(
            8,
            lambda: own_channel(service.target),
            lambda channel: pb_grpc.ForecastServiceStub(channel).Forecast(request, timeout=30),
        ) as load:
            time.sleep(1.0)
            # A healthy version: evaluated, promoted on both workers, counted once.
            good = copy_version(first, base)
            wait_for(lambda: served_versions(service) == {good.name}, "both workers serve it")
            instance = scrape(service.metrics_port)
            assert value(instance, "forecast_model_promotions_total", result="promoted") == 1
            # A collapsed version: rejected by the instance, counted once; nothing switches.
            collapsed = zero_head(good, base)
            wait_for(
                lambda: (
                    value(
                        scrape(service.metrics_port),
                        "forecast_model_rejections_total",
                        reason="collapsed",
                    )
                    == 1
                ),
                "the collapsed version is rejected",
            )
            wait_for(
                lambda: not labelled(scrape(service.metrics_port), "forecast_candidate_info"),
                "no worker keeps the rejected candidate",
                timeout=10,
            )
            assert served_versions(service) == {good.name}
            # A rollback asked of one worker is made by both.
            with own_channel(service.target) as channel:
                pb_grpc.ModelAdminStub(channel).SetServingVersion(
                    pb.SetServingVersionRequest(version=first.name), timeout=120
                )
            wait_for(
                lambda: served_versions(service) == {first.name},
                "both workers serve the rolled-back version",
                timeout=30,
            )
            time.sleep(0.5)
        service.terminate()
        assert service.process.wait(timeout=60) == 0
        stderr = service.stderr()
    codes = Counter(call.code.name for call in load.calls)
    versions = Counter(getattr(call.answer, "model_version", "") for call in load.calls)
    assert codes == {"OK": len(load.calls)}, codes
    assert collapsed.name not in versions and good.name in versions, versions
    assert len(load.calls) > 500, codes
    assert "Traceback" not in stderr


@pytest.mark.parametrize("taken", ["grpc", "metrics"])
def test_a_taken_port_ends_the_instance_with_one_line_and_exit_2(trained_version, taken):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        if taken == "grpc":
            result = run_service(
                trained_version, "--workers", WORKERS, address=f"127.0.0.1:{port}", timeout=60
            )
            expected = f"cannot bind gRPC address 127.0.0.1:{port} (in use or not permitted)"
        else:
            flags = ("--metrics-address", "127.0.0.1", "--metrics-port", str(port))
            result = run_service(trained_version, "--workers", WORKERS, *flags, timeout=60)
            expected = f"cannot serve /metrics on 127.0.0.1:{port} ("

    assert result.returncode == 2, result.stderr
    last = service_lines(result.stderr)[-1]
    assert last.startswith(f"python -m service: error: {expected}"), result.stderr
    assert "Traceback" not in result.stderr
