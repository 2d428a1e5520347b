"""``python -m benchmarks.kserve_peer``: the served version behind KServe's ModelServer.

    .venv-kserve/bin/python -m benchmarks.kserve_peer --artifacts artifacts

Loads the version (:class:`benchmarks.kserve_peer.model.ForecastModel`), runs each batch size
of ``--warmup-sizes`` once, then starts ``kserve.ModelServer`` with the model registered as
``--model-name``: the Open Inference Protocol (v2) over gRPC on a free port, logged in the
service's format ("gRPC listening on [::]:P (port P, plaintext), KServe ModelServer"; see
``service.announce``), and KServe's REST API on a port the OS picks (unused by the bench).
Per-request latency log lines are off, as in a deployment that cares for throughput. The
model is ready (OIP ``ModelReady``) once the server is up; it has no gRPC health service.

KServe binds its gRPC port itself and does not report it, so the port is reserved first with
``SO_REUSEPORT`` and held while KServe binds the same port (grpc's
``examples/python/multiprocessing`` pattern; gRPC sets ``SO_REUSEPORT`` on its sockets): no
other process can take it in between.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator

from service.announce import GRPC_LISTENING
from training.cli import command_parser, int_list, positive

PROG = "python -m benchmarks.kserve_peer"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A free TCP port on every address, held (bound, not listening) until the block ends."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0:
        raise OSError("cannot set SO_REUSEPORT")
    sock.bind(("", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        PROG,
        __doc__.splitlines()[0],
        artifacts_help="version or base directory (the newest version is served)",
    )
    parser.add_argument(
        "--model-name",
        default="forecast",
        help="the model's name in the Open Inference Protocol (the service's default)",
    )
    parser.add_argument(
        "--warmup-sizes",
        type=int_list,
        default="1,64,256",
        help="batch sizes run once before serving (the shapes the bench sends)",
    )
    parser.add_argument(
        "--no-jit",
        action="store_true",
        help="plain tf.function; by default XLA compiles it, as the service's model",
    )
    parser.add_argument(
        "--grace",
        type=positive(int),
        default=5,
        help="seconds KServe waits for calls in flight on SIGTERM",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    # Deferred: TensorFlow; and kserve parses sys.argv for its own flags when imported.
    import kserve  # type: ignore[import-not-found]

    from benchmarks.kserve_peer.model import ForecastModel
    from training.artifacts import ArtifactError
    from training.model import configure_devices

    configure_devices()
    model = ForecastModel(args.model_name, args.artifacts, jit_compile=not args.no_jit)
    try:
        model.load()
    except ArtifactError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    model.warm_up(args.warmup_sizes)
    log.info("serving version %s as model '%s'", model.version, args.model_name)
    with reserved_port() as port:
        log.info(GRPC_LISTENING + ", KServe ModelServer", f"[::]:{port}", port, "plaintext")
        server = kserve.ModelServer(
            http_port=0,
            grpc_port=port,
            workers=1,
            enable_grpc=True,
            enable_latency_logging=False,
            grace_period=args.grace,
        )
        server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
