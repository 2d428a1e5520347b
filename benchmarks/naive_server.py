"""The naive server: what most people write first, as the baseline the service must beat.

    python -m benchmarks.naive_server --artifacts artifacts --address 127.0.0.1:0

grpc's route_guide pattern: a synchronous ``grpc.server`` on a thread pool, each RPC converts
its windows to numpy, scales them with the version's own transform, calls Keras
``model.predict`` once for that request, and inverts the transform. No batching across requests,
no compilation beyond what ``predict`` does itself. The answers equal the service's.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.announce import GRPC_LISTENING
from service.api import SERVICE_NAME, pb, pb_grpc
from training.cli import command_parser

PROG = "python -m benchmarks.naive_server"
log = logging.getLogger(__name__)


class NaiveServicer(pb_grpc.ForecastServiceServicer):
    def __init__(self, artifacts):
        self._model = artifacts.model
        self._transform = artifacts.transform()
        self._shape = (artifacts.window, len(artifacts.feature_names))
        self._version = artifacts.version

    def predict(self, windows: np.ndarray) -> np.ndarray:
        x, anchors = self._transform.encode_windows(windows)
        raw = self._model.predict(x, verbose=0)
        return self._transform.decode(raw, anchors)

    def Forecast(self, request: pb.ForecastRequest, context) -> pb.ForecastResponse:
        windows = np.array([list(w.values) for w in request.windows], dtype=np.float32)
        forecasts = self.predict(windows.reshape(-1, *self._shape))
        return pb.ForecastResponse(
            predictions=[pb.Prediction(values=row) for row in forecasts.tolist()],
            model_version=self._version,
        )

    def StreamForecast(self, request_iterator, context) -> Iterator[pb.ForecastResponse]:
        for request in request_iterator:
            yield self.Forecast(request, context)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        PROG,
        __doc__.splitlines()[0],
        artifacts_help="version or base directory (the newest version is served)",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1:0",
        help="listen address (port 0: the OS picks one, logged on stderr)",
    )
    parser.add_argument(
        "--workers", type=int, default=10, help="thread-pool size (grpc's examples use 10)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    from training.artifacts import ArtifactError, load_artifacts  # deferred: TensorFlow
    from training.model import configure_devices

    configure_devices()
    try:
        artifacts = load_artifacts(args.artifacts)
    except ArtifactError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    servicer = NaiveServicer(artifacts)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    pb_grpc.add_ForecastServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(args.address)
    if port == 0:
        print(f"{PROG}: error: cannot bind gRPC address {args.address}", file=sys.stderr)
        return 2
    server.start()
    log.info(GRPC_LISTENING + ", naive server", args.address, port, "plaintext")
    # Warm up the shapes the benchmark sends, as a careful user would before taking traffic.
    warm = np.zeros((256, artifacts.window, len(artifacts.feature_names)), np.float32)
    for n in (1, 64, 256):
        servicer.predict(warm[:n])
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
