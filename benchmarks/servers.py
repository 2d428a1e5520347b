"""The systems under test, each in its own server process, and what is read from them.

Each server binds ``127.0.0.1:0`` and logs "gRPC listening on ... (port N"; the port is read
from that line (no probing for a free port; the KServe peer reserves its port, see
``benchmarks.kserve_peer``). A server counts as ready when gRPC health reports SERVING, which the
service does only after every batch bucket is compiled (with ``--workers``, in every worker),
or, for the KServe peer, which has no gRPC health, when the Open Inference Protocol's
ModelReady says so. CPU time and RSS come from ``/proc``, summed over the server's process tree
(every thread of the server process and of its descendants: a supervisor and its workers).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.workload import FORECAST_V1, MODES, OIP_MODEL, OIP_V2
from service import announce
from service.api import oip_grpc, oip_pb

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE_LINE = re.compile(r"device: (CPU|GPU)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The KServe peer's interpreter (`make kserve-venv` creates the environment).
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
# Every system of the comparison, in report order (see :func:`systems`).
SYSTEM_NAMES = (
    "transport_ceiling",
    "naive",
    "service",
    "service_no_monitoring",
    "service_workers2",
    "kserve",
)
# The modes the second service process count runs in: the single-window unary target's, and
# the Open Inference Protocol's (the others would add minutes to the run for little news).
WORKERS2_MODES = ("unary", "oip1", "oip256")


@dataclass(frozen=True)
class System:
    """A server the bench starts: a name for the results, a label for people, its argv, and
    what it can be asked."""

    name: str
    label: str
    module_args: tuple[str, ...]
    runs_model: bool = True
    protocols: tuple[str, ...] = (FORECAST_V1,)  # see benchmarks.workload.Mode.protocol
    only_modes: tuple[str, ...] | None = None  # None: every mode of its protocols
    python: str = sys.executable
    readiness: str = "health"  # "health": gRPC health SERVING; "oip": ModelReady

    def runs(self, mode: str) -> bool:
        """Whether this system is measured in ``mode``."""
        return MODES[mode].protocol in self.protocols and (
            self.only_modes is None or mode in self.only_modes
        )


def service_args(artifacts: Path, *flags: str, workers: int = 1) -> tuple[str, ...]:
    """``python -m service`` on OS-chosen loopback ports (gRPC and /metrics), with ``flags``,
    as ``workers`` serving processes (always explicit: the service's default is one per core)."""
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
        "--workers",
        str(workers),
        *flags,
    )


def systems(
    artifacts: Path,
    *,
    naive_workers: int,
    service_flags: tuple[str, ...] = (),
    kserve_python: Path | None = None,
) -> list[System]:
    """The servers of the comparison, in report order (the KServe peer only with
    ``kserve_python``, the interpreter of its own environment).

    The service variants export /metrics on a loopback port (scraped by the bench like a
    Prometheus would). The two with one process differ only in ``--monitoring``; the one with
    ``--workers 2`` has monitoring on and runs only :data:`WORKERS2_MODES`. The service with
    monitoring on and the KServe peer answer the Open Inference Protocol modes too.
    """
    service = service_args(artifacts, *service_flags)
    workers2 = service_args(artifacts, *service_flags, workers=2)
    peer = (
        [
            System(
                "kserve",
                "KServe ModelServer (kserve 0.21, same model in a tf.function)",
                (
                    "benchmarks.kserve_peer",
                    "--artifacts",
                    str(artifacts),
                    "--model-name",
                    OIP_MODEL,
                ),
                protocols=(OIP_V2,),
                python=str(kserve_python),
                readiness="oip",
            )
        ]
        if kserve_python is not None
        else []
    )
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
        System(
            "service",
            "service --workers 1, monitoring on",
            (*service, "--monitoring", "true"),
            protocols=(FORECAST_V1, OIP_V2),
        ),
        System(
            "service_no_monitoring",
            "service --workers 1, monitoring off",
            (*service, "--monitoring", "false"),
        ),
        System(
            "service_workers2",
            "service --workers 2, monitoring on",
            (*workers2, "--monitoring", "true"),
            protocols=(FORECAST_V1, OIP_V2),
            only_modes=WORKERS2_MODES,
        ),
        *peer,
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


# Over a process tree, a process or thread that ends meanwhile drops out of the sums (the
# service's workers live as long as their supervisor).
_GONE = (FileNotFoundError, ProcessLookupError)


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a /proc ``stat`` file after the command name, from ``state`` on."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(stat: Path) -> float:
    """User + system CPU time from a /proc ``stat`` file (a process's or one thread's)."""
    fields = _stat_fields(stat)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """``pid`` and every live descendant of it, parents first (parent ids read from each
    process's ``stat``: this kernel has no ``/proc/<pid>/task/<tid>/children``)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(entry / "stat")[1])
        except (*_GONE, IndexError, ValueError):
            continue  # it ended meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    tree, k = [pid], 0
    while k < len(tree):
        tree += sorted(children.get(tree[k], ()))
        k += 1
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of ``pid`` and its descendants, every thread."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(*_GONE):
            total += _cpu_seconds(Path(f"/proc/{p}/stat"))
    return total


def tree_thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time so far per OS thread name over ``pid`` and its descendants."""
    by_name: dict[str, float] = {}
    for p in process_tree(pid):
        with contextlib.suppress(*_GONE):
            for task in list(Path(f"/proc/{p}/task").iterdir()):
                with contextlib.suppress(*_GONE):
                    name = (task / "comm").read_text().strip()
                    by_name[name] = by_name.get(name, 0.0) + _cpu_seconds(task / "stat")
    return by_name


def tree_rss_bytes(pid: int) -> int:
    """VmRSS summed over ``pid`` and its descendants."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(*_GONE):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):  # a zombie has none
                    total += int(line.split()[1]) * 1024
    return total


def _serving(channel: grpc.Channel) -> Callable[[], bool]:
    stub = health_pb2_grpc.HealthStub(channel)

    def ready() -> bool:
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    return ready


def _model_ready(channel: grpc.Channel) -> Callable[[], bool]:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)

    def ready() -> bool:
        return stub.ModelReady(oip_pb.ModelReadyRequest(name=OIP_MODEL), timeout=5).ready

    return ready


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
            [system.python, "-m", *system.module_args],
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
            ready = _model_ready(channel) if self.system.readiness == "oip" else _serving(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"{self.system.name} exited while warming up:\n" + self._tail()
                    )
                try:
                    if ready():
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise ServerError(f"{self.system.name} did not report ready within {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of every thread of the process tree."""
        return tree_cpu_seconds(self.pid)

    def thread_cpu_seconds(self) -> dict[str, float]:
        """User + system CPU time so far per OS thread name over the process tree (threads of
        one name summed, in one worker and over workers; the service names its model and
        monitoring threads, see ``service.threads``)."""
        return tree_thread_cpu_seconds(self.pid)

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
        """Resident memory summed over the process tree (pages two processes share count
        once per process)."""
        return tree_rss_bytes(self.pid)

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
