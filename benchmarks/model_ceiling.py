"""The model ceiling: the service's own compiled model path, called in-process with no gRPC.

    python -m benchmarks.model_ceiling --artifacts artifacts --batch-sizes 1,64,256
    python -m benchmarks.model_ceiling --artifacts artifacts --serve   # sizes on stdin

Builds ``service.forecaster.Forecaster`` with the service's default batch buckets and XLA (the
exact object the service's batcher calls), warms every bucket up, then for each batch size calls
``predict`` back to back on held-out windows (float32, as they arrive from gRPC): ``--warmup``
seconds unmeasured, then ``--duration`` seconds measured. Prints one JSON object on stdout.

With ``--serve`` it prints ``{"device", "buckets"}`` once warmed up, then measures each batch size
read from stdin (one per line) and prints its figures as one JSON line, until stdin closes. The
bench keeps it running that way in its own process (same device and CPU pinning as the servers),
idle while the servers are measured, so each batch size is measured right before the points it is
compared with.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.stats import summarize
from benchmarks.workload import WorkloadError, batches, held_out, model_shape
from training.cli import command_parser, int_list

PROG = "python -m benchmarks.model_ceiling"


def measure(forecaster, windows: np.ndarray, batch_size: int, warmup: float, duration: float):
    inputs = batches(windows, batch_size)
    i = 0
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup or i == 0:
        forecaster.predict(inputs[i % len(inputs)])
        i += 1
    latencies = []
    started = time.perf_counter()
    end = started + duration
    while (now := time.perf_counter()) < end:
        forecaster.predict(inputs[i % len(inputs)])
        latencies.append(time.perf_counter() - now)
        i += 1
    elapsed = time.perf_counter() - started
    return summarize(np.asarray(latencies), windows_per_request=batch_size, seconds=elapsed)


class CeilingProcess:
    """``python -m benchmarks.model_ceiling --serve`` as a child process: measure on demand."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        cpus: tuple[int, ...] | None = None,
    ):
        import os
        import subprocess

        from benchmarks.servers import REPO_ROOT

        self._log = log_path.open("wb")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.model_ceiling", "--serve", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        assert self.process.stdin is not None and self.process.stdout is not None  # PIPEs
        self._stdin, self._stdout = self.process.stdin, self.process.stdout
        self.info: dict = {}

    def _reply(self) -> dict:
        line = self._stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
            raise RuntimeError(f"model ceiling exited {self.process.returncode}:\n{tail}")
        return json.loads(line)

    def wait_ready(self) -> dict:
        """Block until every bucket is compiled; returns {"device", "buckets"}."""
        self.info = self._reply()
        return self.info

    def measure(self, batch_size: int) -> dict:
        self._stdin.write(f"{batch_size}\n")
        self._stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self._stdin.close()
            try:
                self.process.wait(timeout=30)
            except Exception:  # noqa: BLE001 - it must not outlive the bench
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> CeilingProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    from service.config import Settings

    defaults = Settings()
    parser = command_parser(
        PROG,
        __doc__.splitlines()[0],
        artifacts_help="version or base directory (the newest version)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int_list,
        default="1,64,256",
        help="comma-separated windows per predict call",
    )
    parser.add_argument(
        "--buckets",
        type=functools.partial(int_list, unique_sorted=True),
        default=",".join(map(str, defaults.batch_buckets)),
        help="padding buckets, as the service's --batch-buckets",
    )
    parser.add_argument("--no-jit", action="store_true", help="plain tf.function, no XLA")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per size")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per size")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="read batch sizes from stdin, one JSON line of figures each",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from service.forecaster import Forecaster  # deferred: TensorFlow
    from training.artifacts import ArtifactError, load_artifacts
    from training.model import configure_devices

    device = configure_devices()
    try:
        _, _, manifest = model_shape(args.artifacts)
        windows = held_out(manifest)
        artifacts = load_artifacts(args.artifacts)
    except (ArtifactError, WorkloadError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    forecaster = Forecaster(artifacts, buckets=args.buckets, jit_compile=not args.no_jit)
    forecaster.warm_up()
    if args.serve:
        print(json.dumps({"device": device, "buckets": list(args.buckets)}), flush=True)
        for line in sys.stdin:
            figures = measure(forecaster, windows, int(line), args.warmup, args.duration)
            print(json.dumps(figures), flush=True)
        return 0
    results = {
        str(size): measure(forecaster, windows, size, args.warmup, args.duration)
        for size in args.batch_sizes
    }
    print(json.dumps({"device": device, "buckets": list(args.buckets), "by_batch_size": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
