"""The systems under test, each in its own server process, and what is read from them.

Each server binds ``127.0.0.1:0`` and logs "gRPC listening on ... (port N"; the port is read
from that line (no probing for a free port). A server counts as ready when gRPC health reports
SERVING, which the service does only after every batch bucket is compiled. CPU time and RSS
come from ``/proc/<pid>`` (all threads of the server process).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service import announce

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE_LINE = re.compile(r"device: (CPU|GPU)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class System:
    """A server the bench starts: a name for the results, a label for people, its argv."""

    name: str
    label: str
    module_args: tuple[str, ...]
    runs_model: bool = True


def service_args(artifacts: Path, *flags: str) -> tuple[str, ...]:
    """``python -m service`` on OS-chosen loopback ports (gRPC and /metrics), with ``flags``."""
    return (
        "service",
        "--artifacts",
        str(artifacts),
        "--address",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        "0",
        *flags,
    )


def systems(
    artifacts: Path, *, naive_workers: int, service_flags: tuple[str, ...] = ()
) -> list[System]:
    """The four servers of the comparison, in report order.

    Both service variants export /metrics on a loopback port (scraped by the bench like a
    Prometheus would); they differ only in ``--monitoring``.
    """
    service = service_args(artifacts, *service_flags)
    return [
        System(
            "transport_ceiling",
            "echo server (no model)",
            ("benchmarks.echo_server", "--artifacts", str(artifacts)),
            runs_model=False,
        ),
        System(
            "naive",
            "naive server (model.predict per request)",
            (
                "benchmarks.naive_server",
                "--artifacts",
                str(artifacts),
                "--workers",
                str(naive_workers),
            ),
        ),
        System("service", "service, monitoring on", (*service, "--monitoring", "true")),
        System(
            "service_no_monitoring", "service, monitoring off", (*service, "--monitoring", "false")
        ),
    ]


def batching_flags(
    batch_buckets: tuple[int, ...] | None, max_batch_size: int | None
) -> tuple[str, ...]:
    """The service's batching flags (None: keep the service's default)."""
    flags: tuple[str, ...] = ()
    if batch_buckets is not None:
        flags += ("--batch-buckets", ",".join(map(str, batch_buckets)))
    if max_batch_size is not None:
        flags += ("--max-batch-size", str(max_batch_size))
    return flags


def server_env(device: str) -> dict[str, str]:
    """The bench's environment without FORECAST_* settings; ``cpu`` hides every GPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _cpu_seconds(stat: Path) -> float:
    """User + system CPU time from a /proc ``stat`` file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """``python -m <module> ...`` with stderr captured in ``log_path``; started at once, usable
    after :meth:`wait_ready`."""

    def __init__(
        self,
        system: System,
        log_path: Path,
        *,
        env: dict[str, str],
        cpus: tuple[int, ...] | None = None,
        timeout: float = 300.0,
    ):
        self.system = system
        self.log_path = log_path
        self._log = log_path.open("wb")
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", *system.module_args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            preexec_fn=preexec,  # the orchestrator starts no threads of its own
        )
        self._timeout = timeout
        self.port: int | None = None
        self.target = ""
        self.metrics_url: str | None = None

    def wait_ready(self) -> ServerProcess:
        """Block until the port is logged and health reports SERVING (closes it on failure)."""
        try:
            self.port = int(self._wait_for(announce.GRPC_PORT, self._timeout).group(1))
            self.target = f"127.0.0.1:{self.port}"
            self._wait_until_serving(self._timeout)
        except BaseException:
            self.close()
            raise
        port = announce.metrics_port(self.log())
        self.metrics_url = f"http://127.0.0.1:{port}/metrics" if port else None
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def device(self) -> str:
        """What the server logged it runs the model on ("none" for the echo server)."""
        if not self.system.runs_model:
            return "none"
        match = DEVICE_LINE.search(self.log())
        return match.group(1) if match else "unknown"

    def _tail(self) -> str:
        lines = [ln for ln in self.log().splitlines() if ln.strip()]
        return "\n".join(lines[-15:])

    def _wait_for(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log())
            if match:
                return match
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.system.name} exited {self.process.returncode} before listening:\n"
                    + self._tail()
                )
            time.sleep(0.05)
        raise ServerError(f"{self.system.name} did not log its port within {timeout:.0f}s")

    def _wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"{self.system.name} exited while warming up:\n" + self._tail()
                    )
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise ServerError(f"{self.system.name} did not report SERVING within {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of every thread so far."""
        return _cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    def thread_cpu_seconds(self) -> dict[str, float]:
        """User + system CPU time so far per OS thread name (threads of one name summed; the
        service names its model and monitoring threads, see ``service.threads``)."""
        by_name: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                seconds = _cpu_seconds(task / "stat")
            except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
                continue
            by_name[name] = by_name.get(name, 0.0) + seconds
        return by_name

    def wait_idle(
        self, *, below_cores: float = 0.1, step: float = 0.25, limit: float = 30.0
    ) -> float:
        """Wait until the server uses less than ``below_cores`` CPU (work left over from
        cancelled calls must not spill into the next measurement). Returns seconds waited."""
        started = time.monotonic()
        before = self.cpu_seconds()
        while time.monotonic() - started < limit:
            time.sleep(step)
            now = self.cpu_seconds()
            if (now - before) / step < below_cores:
                break
            before = now
        return time.monotonic() - started

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for pid {self.pid}")

    def scrape(self) -> dict[str, float]:
        """The service's /metrics samples as {name{labels}: value} ({} without an endpoint)."""
        if self.metrics_url is None:
            return {}
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                try:
                    samples[key] = float(value)
                except ValueError:
                    continue
        return samples

    def close(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
