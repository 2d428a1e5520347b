"""Several serving processes on one port: ``python -m service --workers N``.

One Python event loop carries every RPC of a process and shares the GIL with the model and
monitoring threads; past it, throughput comes from more processes. With ``--workers N`` > 1 the
process started becomes a light *supervisor* (it never imports TensorFlow) and starts N
*workers*, each a complete ``python -m service`` with its own event loop, batcher, model and
detectors, all bound to the same gRPC port with ``SO_REUSEPORT`` (the kernel spreads incoming
connections over them).

The instance still behaves as one server:

- **Metrics.** Each worker exports on a private loopback port; the supervisor serves the one
  ``/metrics`` of the instance on ``--metrics-port``, merged by :mod:`monitoring.workers`
  (counters and histograms summed, collapse and drift from the worst worker).
- **Health.** A worker reports SERVING only when every worker is warm, and with
  ``--on-collapse unready`` its forecast service turns NOT_SERVING when any worker's output
  collapsed: a probe gets the same answer from whichever worker it reaches.
- **Drain.** SIGTERM/SIGINT to the supervisor goes to every worker; each drains (refusing new
  calls with UNAVAILABLE, finishing the ones in flight); the supervisor exits 0 when all did.
- **Versions.** Each worker watches the artifacts and evaluates a new version on its own share
  of the traffic; the first verdict reached is the instance's (the others adopt it), and a
  ``ModelAdmin.SetServingVersion`` answered by one worker is applied by all.
- **Crashes.** A worker that dies is started again (it serves the version the others serve);
  its counters are carried over so the instance's sums never go backwards.

They share a private state directory (created by the supervisor, removed at exit): one JSON
file per worker (:class:`WorkerState`), one per verdict, one per admin switch. Files are
written whole and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring import workers as merged_metrics
from monitoring.metrics import start_metrics_server
from service.announce import GRPC_LISTENING, METRICS_LISTENING
from service.config import Settings

log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "FORECAST_INTERNAL_WORKER_INDEX"
WORKER_STATE_ENV = "FORECAST_INTERNAL_WORKER_STATE"
WORKER_COUNT_ENV = "FORECAST_INTERNAL_WORKERS"
WORKER_MEMORY_BYTES = 1 << 30
"""Memory budgeted per worker by the automatic worker count: one worker of the default model
measured 832 MB RSS, 857 MB with a candidate version resident (benchmarks.rollout)."""
LINK_PERIOD_S = 0.2
"""How often a worker publishes its state and reads its peers'."""
STARTUP_TIMEOUT_S = 300.0
SCRAPE_TIMEOUT_S = 5.0
RESTART_BACKOFF_S = 1.0
PR_SET_PDEATHSIG = 1


# -------------------------------------------------------------------------------------------
# How many workers
# -------------------------------------------------------------------------------------------


def usable_cores() -> int:
    """CPUs this process may run on, lowered by a cgroup v2 CPU quota (a container limit)."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def available_memory() -> int:
    """Bytes available: the kernel's MemAvailable, lowered by a cgroup v2 memory limit."""
    available = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = int(limit) - used
            available = room if available == 0 else min(available, room)
    return available


def auto_workers(cores: int, memory: int) -> tuple[int, str]:
    """``--workers 0``: one per usable core, at most as many as the memory holds. Returns the
    count and the reason, for the log."""
    by_memory = max(1, memory // WORKER_MEMORY_BYTES) if memory > 0 else cores
    count = max(1, min(cores, by_memory))
    reason = (
        f"{cores} usable core(s), {memory / 2**30:.1f} GiB available at "
        f"{WORKER_MEMORY_BYTES / 2**30:.0f} GiB per worker"
    )
    return count, reason


def worker_count(settings: Settings) -> tuple[int, str]:
    if settings.workers > 0:
        return settings.workers, "--workers"
    return auto_workers(usable_cores(), available_memory())


# -------------------------------------------------------------------------------------------
# The state the workers share
# -------------------------------------------------------------------------------------------


@dataclass
class WorkerState:
    """What one worker publishes for the supervisor and its peers."""

    index: int
    pid: int
    port: int = 0  # the bound gRPC port (the instance's)
    metrics_port: int = -1  # its private /metrics port on loopback (-1: metrics off)
    warm: bool = False
    collapsed: bool = False
    serving: str = ""
    draining: bool = False


def _write_json(path: Path, payload: dict[str, object]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload))
    os.replace(temporary, path)


def _create_json(path: Path, payload: dict[str, object]) -> bool:
    """Write ``path`` only if it does not exist yet (the first writer wins)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload))
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    return True


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def read_states(state_dir: Path) -> dict[int, WorkerState]:
    states = {}
    for path in state_dir.glob("worker-*.json"):
        payload = _read_json(path)
        if payload is not None:
            with contextlib.suppress(TypeError):
                state = WorkerState(**payload)  # type: ignore[arg-type]
                states[state.index] = state
    return states


def _state_path(state_dir: Path, index: int) -> Path:
    return state_dir / f"worker-{index}.json"


# -------------------------------------------------------------------------------------------
# The worker's side
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerContext:
    """Set in a worker process by the supervisor (environment variables)."""

    index: int
    state_dir: Path
    workers: int

    @classmethod
    def from_env(cls) -> WorkerContext | None:
        index = os.environ.get(WORKER_INDEX_ENV)
        state = os.environ.get(WORKER_STATE_ENV)
        count = os.environ.get(WORKER_COUNT_ENV)
        if index is None or state is None or count is None:
            return None
        return cls(int(index), Path(state), int(count))

    def cpu_threads(self) -> int:
        """TensorFlow's thread pools in this worker: its share of the usable cores (N workers
        each with a pool as large as the machine would make N times too many threads)."""
        return max(1, usable_cores() // self.workers)

    def die_with_supervisor(self) -> None:
        """Ask the kernel for SIGTERM (a drain) if the supervisor dies first."""
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the supervisor was already gone
            os.kill(os.getpid(), signal.SIGTERM)

    def instance_version(self) -> str | None:
        """The version the running peers serve (for a worker started again), or None."""
        versions = [s.serving for s in read_states(self.state_dir).values() if s.serving]
        return max(set(versions), key=versions.count) if versions else None


@dataclass(frozen=True)
class PeerVerdict:
    """A verdict on a candidate reached by one worker, adopted by the others."""

    promote: bool
    reason: str
    detail: str
    worker: int


class WorkerPeers:
    """The instance-wide decisions a worker shares: verdicts on candidates and admin switches
    (:class:`service.lifecycle.InstancePeers`)."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context

    def _verdict_path(self, version: str) -> Path:
        return self.context.state_dir / f"verdict-{version}.json"

    def verdict(self, version: str) -> PeerVerdict | None:
        """Another worker's verdict on ``version``, or None."""
        payload = _read_json(self._verdict_path(version))
        if payload is None:
            return None
        verdict = PeerVerdict(
            bool(payload["promote"]),
            str(payload["reason"]),
            str(payload["detail"]),
            int(str(payload["worker"])),
        )
        return None if verdict.worker == self.context.index else verdict

    def publish_verdict(
        self, version: str, promote: bool, reason: str, detail: str
    ) -> tuple[PeerVerdict, bool]:
        """Record this worker's verdict unless another worker's came first. Returns the
        instance's verdict, and whether it is this worker's."""
        mine = PeerVerdict(promote, reason, detail, self.context.index)
        if _create_json(self._verdict_path(version), asdict(mine)):
            return mine, True
        theirs = self.verdict(version)
        return (theirs, False) if theirs is not None else (mine, True)

    def switches(self) -> list[tuple[int, str]]:
        """Admin switches so far: (sequence number, version), in order."""
        found = []
        for path in self.context.state_dir.glob("switch-*.json"):
            payload = _read_json(path)
            if payload is not None:
                found.append((int(str(payload["seq"])), str(payload["version"])))
        return sorted(found)

    def publish_switch(self, version: str) -> int:
        """An operator's switch to ``version`` that every worker applies. Its sequence number."""
        while True:
            done = self.switches()
            seq = done[-1][0] + 1 if done else 1
            payload = {"seq": seq, "version": version, "worker": self.context.index}
            if _create_json(self.context.state_dir / f"switch-{seq:08d}.json", payload):
                return seq


class WorkerLink:
    """Runs in a worker's event loop: publishes its state every :data:`LINK_PERIOD_S`, makes
    health instance-wide from its peers' states, adopts their verdicts and applies their admin
    switches."""

    def __init__(
        self,
        context: WorkerContext,
        *,
        port: int,
        metrics_port: int,
        own_state: Callable[[], tuple[bool, bool, str, bool]],
        on_peers: Callable[[bool, bool], Awaitable[None]],
        adopt_verdict: Callable[[], bool],
        switch_to: Callable[[str], Awaitable[object]],
    ) -> None:
        """``own_state()`` -> (warm, collapsed, serving version, draining);
        ``on_peers(all_warm, any_collapsed)`` updates health; ``adopt_verdict()`` applies a
        peer's verdict on the current candidate; ``switch_to(version)`` an admin switch."""
        self.context = context
        self.peers = WorkerPeers(context)
        self.state = WorkerState(context.index, os.getpid(), port, metrics_port)
        self._own_state = own_state
        self._on_peers = on_peers
        self._adopt_verdict = adopt_verdict
        self._switch_to = switch_to
        done = self.peers.switches()
        self._applied = done[-1][0] if done else 0  # a restarted worker starts from now
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.publish()
        self._task = asyncio.create_task(self._run(), name="worker-link")

    def publish(self) -> None:
        warm, collapsed, serving, draining = self._own_state()
        self.state.warm, self.state.collapsed = warm, collapsed
        self.state.serving, self.state.draining = serving, draining
        _write_json(_state_path(self.context.state_dir, self.context.index), asdict(self.state))

    async def step(self) -> None:
        self.publish()
        states = read_states(self.context.state_dir)
        peers = [states.get(i) for i in range(self.context.workers)]
        all_warm = all(s is not None and s.warm for s in peers)
        any_collapsed = any(s is not None and s.collapsed for s in peers)
        await self._on_peers(all_warm, any_collapsed)
        self._adopt_verdict()
        for seq, version in self.peers.switches():
            if seq <= self._applied:
                continue
            self._applied = seq
            try:
                await self._switch_to(version)
            except Exception as exc:  # noqa: BLE001 - a switch this worker cannot make is logged
                log.error(
                    "worker %d: cannot apply the switch to %s: %s", self.state.index, version, exc
                )

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # noqa: BLE001 - the link must never stop serving
                log.exception("worker %d: sharing state failed", self.context.index)
            await asyncio.sleep(LINK_PERIOD_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(OSError):
            self.publish()


# -------------------------------------------------------------------------------------------
# The supervisor's side
# -------------------------------------------------------------------------------------------


def _with_port(address: str, port: int) -> str:
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0


class _InstanceMetrics(Collector):
    """The instance's ``/metrics``: every live worker's, merged (:mod:`monitoring.workers`)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._last: dict[int, tuple[int, merged_metrics.Families]] = {}  # index -> (pid, families)
        self._retired = merged_metrics.RetiredCounters()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            live = self._scrape()
            families = merged_metrics.merge(live, self._retired)
        yield from families
        workers = GaugeMetricFamily(
            "forecast_workers", "Serving processes of this instance, by state.", labels=["state"]
        )
        counts = self._supervisor.counts()
        for state in ("configured", "running", "warm"):
            workers.add_metric([state], counts[state])
        yield workers
        yield CounterMetricFamily(
            "forecast_worker_restarts",
            "Workers started again after they died.",
            value=self._supervisor.restarts(),
        )

    def _scrape(self) -> list[merged_metrics.Families]:
        states = read_states(self._supervisor.state_dir)
        live = []
        for index in range(self._supervisor.count):
            state = states.get(index)
            previous = self._last.get(index)
            if state is None or state.metrics_port < 0:
                continue
            if previous is not None and previous[0] != state.pid:
                self._retired.retire(previous[1])  # a replaced worker: keep what it counted
                del self._last[index]
            try:
                url = f"http://127.0.0.1:{state.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:
                    families = merged_metrics.parse(answer.read().decode())
            except OSError:
                last = self._last.get(index)
                if last is not None:  # down for a moment: its last figures, not a dip
                    live.append(last[1])
                continue
            self._last[index] = (state.pid, families)
            live.append(families)
        return live


class Supervisor:
    """Starts the workers, serves the instance's metrics, forwards signals, starts a dead
    worker again, and exits when every worker has drained."""

    def __init__(self, settings: Settings, argv: list[str], count: int) -> None:
        self.settings = settings
        self.argv = argv
        self.count = count
        self.state_dir = Path(tempfile.mkdtemp(prefix="forecast-workers-"))
        self.workers = [_Worker(i) for i in range(count)]
        self.address = settings.address
        self.stopping = threading.Event()
        self._restarts = 0

    def counts(self) -> dict[str, int]:
        states = read_states(self.state_dir)
        running = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        warm = [w for w in running if (s := states.get(w.index)) is not None and s.warm]
        return {"configured": self.count, "running": len(running), "warm": len(warm)}

    def restarts(self) -> int:
        return self._restarts

    def _spawn(self, worker: _Worker) -> None:
        env = dict(os.environ)
        env[WORKER_INDEX_ENV] = str(worker.index)
        env[WORKER_STATE_ENV] = str(self.state_dir)
        env[WORKER_COUNT_ENV] = str(self.count)
        _state_path(self.state_dir, worker.index).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "service", *self.argv, "--address", self.address]
        worker.process = subprocess.Popen(argv, env=env)
        worker.started = time.monotonic()

    def _wait_bound(self, worker: _Worker) -> int | None:
        """The worker's gRPC port once bound; None if it exited first (its exit code is kept)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert worker.process is not None
        while time.monotonic() < deadline and not self.stopping.is_set():
            state = read_states(self.state_dir).get(worker.index)
            if state is not None and state.port and state.pid == worker.process.pid:
                return state.port
            if worker.process.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        try:
            return self._run()
        finally:
            self._stop_all()
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _run(self) -> int:
        first = self.workers[0]
        self._spawn(first)
        port = self._wait_bound(first)
        if port is None:
            return self._exit_code(first)
        self.address = _with_port(self.settings.address, port)
        for worker in self.workers[1:]:
            self._spawn(worker)
        for worker in self.workers[1:]:
            if self._wait_bound(worker) is None:
                return self._exit_code(worker)
        log.info(
            GRPC_LISTENING + ", %d workers (SO_REUSEPORT)",
            self.settings.address,
            port,
            "TLS" if self.settings.tls_cert else "plaintext",
            self.count,
        )
        metrics_server = None
        if self.settings.metrics_port >= 0:
            registry = CollectorRegistry()
            registry.register(_InstanceMetrics(self))
            metrics_server, metrics_port = start_metrics_server(
                registry, self.settings.metrics_address, self.settings.metrics_port
            )
            log.info(METRICS_LISTENING, self.settings.metrics_address, metrics_port)
        while not self.stopping.wait(0.2):
            for worker in self.workers:
                self._restart_if_dead(worker)
        log.info("shutdown requested: draining %d workers", self.count)
        code = self._drain()
        if metrics_server is not None:
            metrics_server.shutdown()
        log.info("all workers drained; exiting" if code == 0 else "workers ended with errors")
        return code

    def _exit_code(self, worker: _Worker) -> int:
        """A worker ended during start-up: its code (2: bad settings or artifacts)."""
        if self.stopping.is_set():
            return 0
        assert worker.process is not None
        code = worker.process.wait()
        if code != 2:  # 2: the worker has said why, in one line
            log.error("worker %d exited with code %d during start-up", worker.index, code)
        return code if code != 0 else 1

    def _restart_if_dead(self, worker: _Worker) -> None:
        process = worker.process
        if process is None or process.poll() is None or self.stopping.is_set():
            return
        log.error(
            "worker %d (pid %d) ended with code %s; starting it again",
            worker.index,
            process.pid,
            process.returncode,
        )
        if time.monotonic() - worker.started < RESTART_BACKOFF_S:
            time.sleep(RESTART_BACKOFF_S)
        worker.restarts += 1
        self._restarts += 1
        self._spawn(worker)

    def _drain(self) -> int:
        live = [w.process for w in self.workers if w.process is not None]
        for process in live:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_seconds + 15.0
        codes = []
        for process in live:
            try:
                codes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return 0 if all(code == 0 for code in codes) else 1

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def supervise(settings: Settings, argv: list[str], count: int, reason: str) -> int:
    """Run ``count`` workers of ``python -m service argv`` until SIGTERM/SIGINT."""
    supervisor = Supervisor(settings, argv, count)
    log.info(
        "starting %d serving workers (%s); shared state in %s", count, reason, supervisor.state_dir
    )
    return supervisor.run()
