"""The transport ceiling: a bare ``grpc.aio`` ForecastService that runs no model.

    python -m benchmarks.echo_server --artifacts artifacts --address 127.0.0.1:0

It receives the same ``ForecastRequest`` (gRPC parses it into the same protobuf message) and
answers with a same-sized ``ForecastResponse``: one ``Prediction`` of ``horizon`` values per
window (each window's last target value, i.e. a persistence forecast) and the served version's
name. No interceptors, no validation, no batching: what gRPC and protobuf cost on their own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from benchmarks.workload import model_shape
from service.announce import GRPC_LISTENING
from service.api import SERVICE_NAME, pb, pb_grpc
from training.artifacts import ArtifactError
from training.cli import command_parser

PROG = "python -m benchmarks.echo_server"
log = logging.getLogger(__name__)


class EchoServicer(pb_grpc.ForecastServiceServicer):
    def __init__(self, *, version: str, horizon: int, last_target_offset: int):
        self._version = version
        self._horizon = horizon
        self._offset = last_target_offset  # index of the last row's target value, from the end

    def _respond(self, request: pb.ForecastRequest) -> pb.ForecastResponse:
        horizon, offset = self._horizon, self._offset
        return pb.ForecastResponse(
            predictions=[
                pb.Prediction(values=[w.values[offset]] * horizon) for w in request.windows
            ],
            model_version=self._version,
        )

    async def Forecast(
        self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForecastResponse:
        return self._respond(request)

    async def StreamForecast(
        self,
        request_iterator: AsyncIterator[pb.ForecastRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ForecastResponse]:
        async for request in request_iterator:
            yield self._respond(request)


async def serve(address: str, servicer: EchoServicer) -> int:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_ForecastServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC address {address}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(GRPC_LISTENING + ", echo server", address, port, "plaintext")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        PROG,
        __doc__.splitlines()[0],
        artifacts_help="version or base directory: sets horizon, feature count and version",
    )
    parser.add_argument(
        "--address",
        default="127.0.0.1:0",
        help="listen address (port 0: the OS picks one, logged on stderr)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        _, shape, manifest = model_shape(args.artifacts)
    except ArtifactError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    n_features = len(shape.feature_names)
    target_index = manifest.transform.target_index
    servicer = EchoServicer(
        version=shape.version,
        horizon=shape.horizon,
        last_target_offset=-n_features + target_index,
    )
    try:
        return asyncio.run(serve(args.address, servicer))
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
