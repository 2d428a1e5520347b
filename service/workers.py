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
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

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
SUPERVISOR_PID_ENV = "FORECAST_INTERNAL_SUPERVISOR_PID"
WORKER_MEMORY_BYTES = 1 << 30
"""Memory budgeted per worker by the automatic worker count: one worker of the default model
measured 832 MB RSS, 857 MB with a candidate version resident (benchmarks.rollout)."""
LINK_PERIOD_S = 0.2
"""How often a worker publishes its state and reads its peers'."""
STARTUP_TIMEOUT_S = 300.0
SCRAPE_TIMEOUT_S = 5.0
RESTART_BACKOFF_S = 1.0  # doubled after each start that did not last, up to 30 s
QUICK_DEATH_S = 60.0  # a worker that ends sooner after its start did not last
MAX_QUICK_DEATHS = 5  # in a row, for one worker: the instance gives up (exit 1)
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
    candidate: str = ""  # the version it evaluates now ("" none)
    switches: int = 0  # the admin switches it has applied (sequence number)


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


_CONTEXT_ENV = (WORKER_INDEX_ENV, WORKER_STATE_ENV, WORKER_COUNT_ENV, SUPERVISOR_PID_ENV)


@dataclass(frozen=True)
class WorkerContext:
    """Set in a worker process by the supervisor (environment variables)."""

    index: int
    state_dir: Path
    workers: int
    supervisor: int  # its pid

    @classmethod
    def from_env(cls) -> WorkerContext | None:
        values = [os.environ.get(name) for name in _CONTEXT_ENV]
        if any(v is None for v in values):
            return None
        index, state, count, supervisor = (str(v) for v in values)
        return cls(int(index), Path(state), int(count), int(supervisor))

    def cpu_threads(self) -> int:
        """TensorFlow's thread pools in this worker: its share of the usable cores (N workers
        each with a pool as large as the machine would make N times too many threads)."""
        return max(1, usable_cores() // self.workers)

    def die_with_supervisor(self) -> None:
        """Ask the kernel for SIGTERM (a drain) if the supervisor dies first."""
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self.supervisor:  # it was already gone (it may be pid 1 itself)
            os.kill(os.getpid(), signal.SIGTERM)

    def instance_version(self) -> str | None:
        """The version the running peers serve (for a worker started again), or None."""
        versions = [s.serving for s in read_states(self.state_dir).values() if s.serving]
        return max(set(versions), key=versions.count) if versions else None


@dataclass(frozen=True)
class OwnState:
    """What a worker's server reports of itself to its link."""

    warm: bool
    collapsed: bool
    serving: str
    draining: bool
    candidate: str


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
        own_state: Callable[[], OwnState],
        on_peers: Callable[[bool, bool], Awaitable[None]],
        adopt_verdict: Callable[[], bool],
        switch_to: Callable[[str], Awaitable[object]],
    ) -> None:
        """``own_state()``: this worker's state now; ``on_peers(all_warm, any_collapsed)``
        updates health; ``adopt_verdict()`` applies a peer's verdict on the current candidate;
        ``switch_to(version)`` serves a version now (an admin switch, or following the
        instance)."""
        self.context = context
        self.peers = WorkerPeers(context)
        self.state = WorkerState(context.index, os.getpid(), port, metrics_port)
        self._own_state = own_state
        self._on_peers = on_peers
        self._adopt_verdict = adopt_verdict
        self._switch_to = switch_to
        done = self.peers.switches()
        self._applied = done[-1][0] if done else 0  # a restarted worker starts from now
        self._unusable: set[str] = set()  # versions this worker failed to switch to
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.publish()
        self._task = asyncio.create_task(self._run(), name="worker-link")

    def publish(self) -> OwnState:
        own = self._own_state()
        state = self.state
        state.warm, state.collapsed, state.serving = own.warm, own.collapsed, own.serving
        state.draining, state.candidate, state.switches = own.draining, own.candidate, self._applied
        _write_json(_state_path(self.context.state_dir, self.context.index), asdict(state))
        return own

    async def step(self) -> None:
        own = self.publish()
        states = read_states(self.context.state_dir)
        peers = [states.get(i) for i in range(self.context.workers)]
        all_warm = all(s is not None and s.warm for s in peers)
        any_collapsed = any(s is not None and s.collapsed for s in peers)
        await self._on_peers(all_warm, any_collapsed)
        if own.draining:
            return
        self._adopt_verdict()
        for seq, version in self.peers.switches():
            if seq <= self._applied:
                continue
            self._applied = seq
            await self._switch(version, "the operator's switch")
        leader = self._leader(states, own)
        if leader is not None:
            await self._switch(leader.serving, f"the version worker {leader.index} serves")

    def _leader(self, states: dict[int, WorkerState], own: OwnState) -> WorkerState | None:
        """The worker this one follows when they serve different versions and neither is
        evaluating a candidate: the lowest-index warm one (so two never follow each other),
        once it has applied every admin switch this one has. A worker started again, or one
        that missed a promotion, thus ends up serving what the instance serves."""
        if own.candidate or not own.warm:
            return None
        for index in range(self.context.index):
            peer = states.get(index)
            if peer is None or not peer.warm or peer.draining:
                continue
            settled = not peer.candidate and peer.switches >= self._applied
            return peer if settled and peer.serving and peer.serving != own.serving else None
        return None

    async def _switch(self, version: str, why: str) -> None:
        if version in self._unusable:
            return
        log.info("worker %d: serving %s, %s", self.context.index, version, why)
        try:
            await self._switch_to(version)
        except Exception as exc:  # noqa: BLE001 - a switch this worker cannot make is logged
            log.error("worker %d: cannot serve %s: %s", self.context.index, version, exc)
            self._unusable.add(version)

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
    return f"{address.rpartition(':')[0]}:{port}"


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.quick_deaths = 0  # ends in a row within QUICK_DEATH_S of a start


class _InstanceMetrics(Collector):
    """The instance's ``/metrics``: every worker's, merged (:mod:`monitoring.workers`). A
    worker being started again counts with its last figures until the new one answers, and
    those figures are then carried, so no sum dips or goes backwards."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._last: dict[int, tuple[int, merged_metrics.Families]] = {}  # index -> (pid, families)
        self._retired = merged_metrics.RetiredCounters()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        states = read_states(self._supervisor.state_dir)
        with self._lock:
            families = merged_metrics.merge(self._scrape(states), self._retired)
        yield from families
        workers = GaugeMetricFamily(
            "forecast_workers", "Serving processes of this instance, by state.", labels=["state"]
        )
        counts = self._supervisor.counts(states)
        for state in ("configured", "running", "warm"):
            workers.add_metric([state], counts[state])
        yield workers
        yield CounterMetricFamily(
            "forecast_worker_restarts",
            "Workers started again after they died.",
            value=self._supervisor.restarts(),
        )

    def _scrape(self, states: dict[int, WorkerState]) -> list[merged_metrics.Families]:
        live = []
        for index in range(self._supervisor.count):
            state = states.get(index)
            last = self._last.get(index)
            if state is None or state.metrics_port < 0:  # starting: the last figures stand
                if last is not None:
                    live.append(last[1])
                continue
            if last is not None and last[0] != state.pid:  # a new process: carry the old one's
                self._retired.retire(last[1])
                del self._last[index]
                last = None
            try:
                url = f"http://127.0.0.1:{state.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as answer:
                    families = merged_metrics.parse(answer.read().decode())
            except OSError:
                if last is not None:  # down for a moment: its last figures, not a dip
                    live.append(last[1])
                continue
            self._last[index] = (state.pid, families)
            live.append(families)
        return live


class StartError(Exception):
    """The instance cannot start (one line; exit code 2)."""


def check_port_free(address: str) -> None:
    """Fail now if ``address``'s port is taken: the workers bind it with SO_REUSEPORT, which
    would otherwise share it silently with another server that set the option too."""
    host, _, port = address.rpartition(":")
    if port in ("", "0"):
        return
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError) as exc:
        raise StartError(f"cannot bind gRPC address {address} ({exc})") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As gRPC does: connections of an earlier server in TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError:
            raise StartError(
                f"cannot bind gRPC address {address} (in use or not permitted)"
            ) from None


def _exit_status(code: int) -> int:
    """A child's return code as an exit status (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


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

    def counts(self, states: dict[int, WorkerState]) -> dict[str, int]:
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
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        _state_path(self.state_dir, worker.index).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "service", *self.argv, "--address", self.address]
        worker.process = subprocess.Popen(argv, env=env)
        worker.started = time.monotonic()

    def _wait_bound(self, worker: _Worker) -> int | None:
        """The worker's gRPC port once bound; None if it exited first, or did not bind within
        :data:`STARTUP_TIMEOUT_S` (it is killed), or a signal came."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert worker.process is not None
        while time.monotonic() < deadline and not self.stopping.is_set():
            state = read_states(self.state_dir).get(worker.index)
            if state is not None and state.port and state.pid == worker.process.pid:
                return state.port
            if worker.process.poll() is not None:
                return None
            time.sleep(0.05)
        if worker.process.poll() is None and not self.stopping.is_set():
            log.error("worker %d did not bind within %.0fs", worker.index, STARTUP_TIMEOUT_S)
            worker.process.kill()
        return None

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        try:
            return self._run()
        except StartError as exc:
            print(f"python -m service: error: {exc}", file=sys.stderr)
            return 2
        finally:
            self._stop_all()
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _run(self) -> int:
        check_port_free(self.settings.address)
        metrics_server = self._serve_metrics()  # before the workers: a taken port fails fast
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
        if metrics_server is not None:
            log.info(METRICS_LISTENING, self.settings.metrics_address, metrics_server.server_port)
        code = 0
        while not self.stopping.wait(0.2):
            if not all(self._restart_if_dead(worker) for worker in self.workers):
                code = 1
                break
        log.info("shutdown requested: draining %d workers", self.count)
        code = max(code, self._drain())
        if metrics_server is not None:
            metrics_server.shutdown()
        log.info("all workers drained; exiting" if code == 0 else "workers ended with errors")
        return code

    def _serve_metrics(self) -> WSGIServer | None:
        if self.settings.metrics_port < 0:
            return None
        registry = CollectorRegistry()
        registry.register(_InstanceMetrics(self))
        address, port = self.settings.metrics_address, self.settings.metrics_port
        try:
            server, _ = start_metrics_server(registry, address, port)
        except OSError as exc:
            raise StartError(f"cannot serve /metrics on {address}:{port} ({exc})") from None
        return server

    def _exit_code(self, worker: _Worker) -> int:
        """A worker ended during start-up: its code (2: bad settings or artifacts)."""
        if self.stopping.is_set():
            return 0
        assert worker.process is not None
        code = _exit_status(worker.process.wait())
        if code != 2:  # 2: the worker has said why, in one line
            log.error("worker %d exited with code %d during start-up", worker.index, code)
        return code if code != 0 else 1

    def _restart_if_dead(self, worker: _Worker) -> bool:
        """Start a worker that ended again; False once it keeps ending right after its start."""
        process = worker.process
        if process is None or process.poll() is None or self.stopping.is_set():
            return True
        quick = time.monotonic() - worker.started < QUICK_DEATH_S
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        if worker.quick_deaths >= MAX_QUICK_DEATHS:
            log.error(
                "worker %d ended %d times within %.0fs of its start; giving up",
                worker.index,
                worker.quick_deaths,
                QUICK_DEATH_S,
            )
            return False
        backoff = (
            min(30.0, RESTART_BACKOFF_S * 2 ** max(0, worker.quick_deaths - 1)) if quick else 0
        )
        log.error(
            "worker %d (pid %d) ended with code %s; starting it again%s",
            worker.index,
            process.pid,
            process.returncode,
            f" in {backoff:.0f}s" if backoff else "",
        )
        if self.stopping.wait(backoff):
            return True
        self._restarts += 1
        self._spawn(worker)
        return True

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
