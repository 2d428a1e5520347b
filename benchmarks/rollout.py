"""``python -m benchmarks.rollout``: a real ``python -m service`` on a base directory, under
closed-loop load, while versions are published into it and switched.

    python -m benchmarks.rollout --artifacts artifacts [--clients 16] [--output-dir results]

The service is started on a fresh base directory holding a copy of the given version. Then,
with ``--clients`` threads (each with its own channel) calling Forecast back to back with one
window each, the whole time:

1. a healthy copy is published (``training.faults copy``): the time until responses carry it
   (publish to promotion), the p99 latency of calls made while it loaded and compiled
   (between the publish and the "warm" log line) next to the p99 of the same span before the
   publish, and the service's RSS before, with the candidate resident, and after promotion;
2. a collapsed copy (``training.faults zero-head``: kernel zeroed, re-sealed so checksums pass)
   is published: it must be rejected and traffic stay on the serving version;
3. a tampered copy (a healthy copy with one byte of its model flipped) must be ignored;
4. ``ModelAdmin.SetServingVersion`` rolls back to the first version.

Every call's status is counted: the run passes only with 0 non-OK responses and the four
outcomes above. Results go to ``rollout.json`` and ``rollout.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

from benchmarks.machine import machine_info
from training.cli import command_parser, positive

PROG = "python -m benchmarks.rollout"
REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"gRPC listening on \S+ \(port (\d+)")
STEP_TIMEOUT_S = 180.0


@dataclass
class Call:
    started: float  # monotonic
    seconds: float
    code: str
    version: str


@dataclass
class RolloutResult:
    clients: int
    calls: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    publish_to_promotion_seconds: float = float("nan")
    compile_seconds: float = float("nan")
    p99_before_ms: float = float("nan")
    p99_compiling_ms: float = float("nan")
    p50_before_ms: float = float("nan")
    p50_compiling_ms: float = float("nan")
    rss_before_mb: float = float("nan")
    rss_candidate_mb: float = float("nan")
    rss_after_mb: float = float("nan")
    collapsed_rejected: bool = False
    collapsed_reason: str = ""
    collapsed_after_windows: int = 0  # candidate windows run when its detector got set
    tampered_ignored: bool = False
    rolled_back: bool = False
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def non_ok(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")


class Clients:
    """Threads calling Forecast back to back, each on its own channel."""

    def __init__(self, target: str, windows: np.ndarray, n: int) -> None:
        from service.client import request_from_windows

        self.requests = [request_from_windows(windows[i : i + 1]) for i in range(len(windows))]
        self.target = target
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def start(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, index: int) -> None:
        from service.api import pb_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            step = index * 7
            while not self._stop.is_set():
                request = self.requests[step % len(self.requests)]
                started = time.monotonic()
                try:
                    response = stub.Forecast(request, timeout=30)
                    code, version = "OK", response.model_version
                except grpc.RpcError as error:
                    code, version = error.code().name, ""
                call = Call(started, time.monotonic() - started, code, version)
                with self._lock:
                    self.calls.append(call)
                step += 5

    def latest_version(self) -> str:
        with self._lock:
            for call in reversed(self.calls):
                if call.code == "OK":
                    return call.version
        return ""

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class Service:
    """``python -m service`` on a base directory, its stderr in a file."""

    def __init__(self, base: Path, log: Path, *flags: str) -> None:
        self.log = log
        self._handle = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--artifacts", str(base)]
            + ["--address", "127.0.0.1:0", "--metrics-port", "-1", "--workers", "1", *flags],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._handle,
        )
        self.port = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = STEP_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        while time.monotonic() < deadline:
            found = compiled.search(self.text())
            if found:
                return found
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"no log line matching {pattern!r} within {timeout:.0f}s")

    def wait_serving(self) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.port = int(self.wait_for(LISTENING.pattern).group(1))
        target = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + STEP_TIMEOUT_S
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return target
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError("the service never reported SERVING")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._handle.close()


def wait_until(condition: object, what: str, timeout: float = STEP_TIMEOUT_S) -> float:
    """Seconds until ``condition()`` holds."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def _percentile_ms(calls: list[Call], q: float) -> float:
    seconds = [c.seconds for c in calls if c.code == "OK"]
    return float(np.percentile(seconds, q) * 1000.0) if seconds else float("nan")


def run_rollout(
    source: Path, workdir: Path, *, clients: int = 16, warm_seconds: float = 3.0
) -> RolloutResult:
    """The scenario of the module docstring; the service logs to ``workdir/service.log``."""
    import shutil

    from service.api import pb, pb_grpc
    from training.artifacts import load_artifacts, resolve_version_dir
    from training.data import impute, synthetic_series
    from training.faults import copy_version, zero_head
    from training.transform import sliding_windows

    source = resolve_version_dir(source)
    base = workdir / "base"
    base.mkdir(parents=True)
    first = base / source.name
    shutil.copytree(source, first)
    artifacts = load_artifacts(first)
    window = artifacts.window
    steps = max(1500, window + 64)
    values, _, _ = impute(synthetic_series(steps).values, (0, steps))
    ends = np.linspace(window - 1, steps - 1, 64).astype(int)
    windows = sliding_windows(values, window, ends).astype(np.float32)
    if windows.shape[2] != len(artifacts.feature_names):
        raise SystemExit(f"{PROG}: error: the version's features are not the built-in series'")

    result = RolloutResult(clients=clients)
    service = Service(base, workdir / "service.log", "--poll-seconds", "0.5")
    load: Clients | None = None
    try:
        target = service.wait_serving()
        load = Clients(target, windows, clients).start()
        time.sleep(warm_seconds)
        # 1. A healthy version: compile-time latency, memory, publish to promotion.
        result.rss_before_mb = service.rss_mb()
        published = time.monotonic()
        good = copy_version(first, base)
        service.wait_for(rf"candidate {re.escape(good.name)}: warm in")
        warm = time.monotonic()
        result.compile_seconds = warm - published
        result.rss_candidate_mb = service.rss_mb()
        wait_until(lambda: load is not None and load.latest_version() == good.name, "promotion")
        result.publish_to_promotion_seconds = time.monotonic() - published
        span = warm - published
        calls = list(load.calls)
        before = [c for c in calls if published - span <= c.started < published]
        compiling = [c for c in calls if published <= c.started < warm]
        result.p99_before_ms = _percentile_ms(before, 99)
        result.p99_compiling_ms = _percentile_ms(compiling, 99)
        result.p50_before_ms = _percentile_ms(before, 50)
        result.p50_compiling_ms = _percentile_ms(compiling, 50)
        time.sleep(warm_seconds)
        result.rss_after_mb = service.rss_mb()
        # 2. A collapsed version: rejected, traffic stays.
        collapsed = zero_head(first, base)
        found = service.wait_for(rf"candidate {re.escape(collapsed.name)} rejected \((\w+)\)")
        result.collapsed_reason = found.group(1)
        after = re.search(r"set on its outputs since window (\d+)", service.text())
        result.collapsed_after_windows = int(after.group(1)) if after else 0
        time.sleep(1.0)
        result.collapsed_rejected = load.latest_version() == good.name
        # 3. A tampered version: ignored.
        staged = copy_version(first, workdir / "staging")  # tampered before it appears
        model = staged / "model.keras"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
        tampered = staged.rename(base / staged.name)
        service.wait_for(rf"ignoring version {re.escape(tampered.name)} \(checksum\)")
        result.tampered_ignored = True
        # 4. Rollback.
        with grpc.insecure_channel(target) as channel:
            admin = pb_grpc.ModelAdminStub(channel)
            admin.SetServingVersion(pb.SetServingVersionRequest(version=first.name), timeout=120)
            wait_until(lambda: load is not None and load.latest_version() == first.name, "rollback")
            result.rolled_back = True
            time.sleep(1.0)
            listed = admin.ListVersions(pb.ListVersionsRequest(), timeout=30)
            result.versions = {v.version: v.status for v in listed.versions}
    finally:
        if load is not None:
            load.stop()
            result.calls = len(load.calls)
            result.codes = dict(Counter(c.code for c in load.calls))
        service.close()
    return result


def markdown(result: RolloutResult) -> str:
    r = result
    lines = [
        f"# Rolling out versions under load ({r.clients} clients, single-window Forecast calls)",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| calls | {r.calls:,} ({', '.join(f'{k} {v:,}' for k, v in sorted(r.codes.items()))}) |",
        f"| non-OK responses | {r.non_ok} |",
        f"| publish to promotion | {r.publish_to_promotion_seconds:.1f} s |",
        f"| load and compile of the candidate | {r.compile_seconds:.1f} s |",
        f"| p99 latency while it compiled / same span before | {r.p99_compiling_ms:.1f} ms / "
        f"{r.p99_before_ms:.1f} ms |",
        f"| p50 latency while it compiled / before | {r.p50_compiling_ms:.1f} ms / "
        f"{r.p50_before_ms:.1f} ms |",
        f"| RSS: one model / candidate resident / after promotion | {r.rss_before_mb:.0f} / "
        f"{r.rss_candidate_mb:.0f} / {r.rss_after_mb:.0f} MB |",
        f"| collapsed copy rejected, traffic stayed | {r.collapsed_rejected} "
        f"({r.collapsed_reason}; its detector set from shadow window "
        f"{r.collapsed_after_windows}) |",
        f"| tampered copy ignored | {r.tampered_ignored} |",
        f"| SetServingVersion rolled back | {r.rolled_back} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(PROG, __doc__.splitlines()[0].split(": ", 1)[1])
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="a version directory or base directory (newest) of the built-in synthetic series",
    )
    parser.add_argument("--clients", type=positive(int), default=16, help="client threads")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("results"),
        help="where rollout.json and rollout.md go",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rollout-") as scratch:
        print(f"{PROG}: starting the service and {args.clients} clients ...", flush=True)
        result = run_rollout(args.artifacts, Path(scratch), clients=args.clients)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {**asdict(result), "non_ok": result.non_ok, "machine": machine_info()}
    (args.output_dir / "rollout.json").write_text(json.dumps(record, indent=2) + "\n")
    text = markdown(result)
    (args.output_dir / "rollout.md").write_text(text)
    print(text)
    ok = (
        result.non_ok == 0
        and result.collapsed_rejected
        and result.tampered_ignored
        and result.rolled_back
    )
    print(f"{'passed' if ok else 'FAILED'}; written to {args.output_dir}/rollout.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
