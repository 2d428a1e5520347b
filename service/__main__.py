"""``python -m service``: load and verify the artifacts, then serve until SIGTERM/SIGINT.

Exit codes: 0 after a clean drain; 2 bad settings or unusable artifacts (one line on stderr).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from service.config import load_settings
from service.workers import WorkerContext

PROG = "python -m service"


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    worker = WorkerContext.from_env()
    who = f"[worker {worker.index}] " if worker is not None else ""
    logging.basicConfig(
        level=settings.log_level, format=f"%(asctime)s %(levelname)s %(name)s {who}%(message)s"
    )
    from service.workers import supervise, worker_count

    if worker is None:
        count, reason = worker_count(settings)
        if count > 1:  # a light supervisor: the workers load TensorFlow, it does not
            return supervise(settings, sys.argv[1:] if argv is None else argv, count, reason)
    else:
        worker.die_with_supervisor()
    from threadpoolctl import threadpool_limits

    from service.lifecycle import load_newest_valid
    from service.server import serve  # deferred: imports TensorFlow
    from training.artifacts import ArtifactError
    from training.model import configure_devices

    device = configure_devices(worker.cpu_threads() if worker is not None else None)
    # numpy's BLAS only serves the monitoring thread's small products. Left at one thread per
    # core, OpenBLAS splits those across a worker that then spins on a core the event loop needs.
    threadpool_limits(limits=1, user_api="blas")
    try:
        artifacts = load_newest_valid(settings.artifacts, prefer=_instance_version(worker))
    except ArtifactError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings, artifacts, device=device, worker=worker))
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


def _instance_version(worker: WorkerContext | None) -> str | None:
    """A worker started again serves the version its peers serve."""
    return worker.instance_version() if worker is not None else None


if __name__ == "__main__":
    sys.exit(main())
