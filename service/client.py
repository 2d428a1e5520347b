"""``python -m service.client``: call the forecast service from the shell, or import it.

    python -m service.client info
    python -m service.client health
    python -m service.client forecast --csv data.csv        # the last `window` rows
    python -m service.client forecast --json windows.json   # [[...], ...] or {"windows": ...}
    python -m service.client forecast --csv data.csv --levels 80,95 --series-id S

As a library::

    from service.client import ForecastClient
    with ForecastClient("localhost:50051") as client:
        info = client.info()
        forecasts = client.forecast(windows)   # numpy [n, window, features] -> [n, horizon]
        response = client.forecast_response(windows, levels=(80, 95))  # with intervals
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api import SERVICE_NAME, pb, pb_grpc
from training.cli import Parser

PROG = "python -m service.client"

# The service config (the ``grpc.service_config`` channel option) ForecastClient uses unless
# given ``retry=False``. A replica that drains on SIGTERM answers every new call UNAVAILABLE at
# once, before doing any work for it, and then stops; a call the network or a restart loses ends
# UNAVAILABLE too. Such calls are tried again, five attempts in all, each after a random pause
# of up to 0.1, 0.2, 0.4 and 0.8 s. ``round_robin`` spreads the calls over every address the
# target resolves to (a headless Service's DNS name, or ``ipv4:host1:port,host2:port``) and
# sends each retry to the next replica. The same windows give the same forecast: retrying is safe.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": SERVICE_NAME}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def request_from_windows(
    windows: np.ndarray, *, levels: Sequence[float] = (), series_id: str = ""
) -> pb.ForecastRequest:
    """``[n, window, features]`` -> ForecastRequest (row-major per window), asking for
    intervals at ``levels`` (percent); ``series_id`` names the series of every window."""
    flat = np.asarray(windows, dtype=np.float32).reshape(len(windows), -1)
    return pb.ForecastRequest(
        windows=[pb.Window(values=row, series_id=series_id) for row in flat.tolist()],
        levels=list(levels),
    )


def forecasts_from_response(response: pb.ForecastResponse) -> np.ndarray:
    return np.array([list(p.values) for p in response.predictions], dtype=np.float64)


def intervals_from_response(response: pb.ForecastResponse) -> list[dict[str, Any]]:
    """One record per level, in request order: ``{"level", "lo", "hi"}`` with ``lo`` and
    ``hi`` ``[n][horizon]`` (target units). Empty when no levels were asked for."""
    if not response.predictions:
        return []
    first = response.predictions[0].intervals
    return [
        {
            "level": first[j].level,
            "lo": [list(p.intervals[j].lo) for p in response.predictions],
            "hi": [list(p.intervals[j].hi) for p in response.predictions],
        }
        for j in range(len(first))
    ]


def _levels(text: str) -> tuple[float, ...]:
    """``--levels``: comma-separated percentages (the server checks their range)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated percentages such as 80,95, got {text!r}"
        ) from None


class ForecastClient:
    """A small synchronous client. ``target`` is host:port (or any gRPC target); TLS when
    ``credentials`` is given. Calls ending UNAVAILABLE are retried (:data:`RETRY_SERVICE_CONFIG`)
    unless ``retry`` is False."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        server_name: str | None = None,
        retry: bool = True,
    ):
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        if retry:
            options.append(("grpc.service_config", RETRY_SERVICE_CONFIG))
        self._channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials
            else grpc.insecure_channel(target, options=options)
        )
        # The generated stub is untyped; its methods return the messages annotated below.
        self._stub = pb_grpc.ForecastServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def __enter__(self) -> ForecastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def info(self) -> pb.ModelInfo:
        info: pb.ModelInfo = self._stub.GetModelInfo(
            pb.GetModelInfoRequest(), metadata=self._metadata, timeout=self._timeout
        )
        return info

    def forecast(self, windows: np.ndarray) -> np.ndarray:
        return forecasts_from_response(self.forecast_response(windows))

    def forecast_response(
        self, windows: np.ndarray, *, levels: Sequence[float] = (), series_id: str = ""
    ) -> pb.ForecastResponse:
        response: pb.ForecastResponse = self._stub.Forecast(
            request_from_windows(windows, levels=levels, series_id=series_id),
            metadata=self._metadata,
            timeout=self._timeout,
        )
        return response

    def health(self, service: str = "") -> str:
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
        )
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return status


def windows_from_csv(path: Path, info: pb.ModelInfo) -> np.ndarray:
    """The last ``window`` rows of the model's feature columns, as one window."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = list(info.feature_names)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    missing = [n for n in names if n not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(rows) < info.window:
        raise ValueError(f"{path}: has {len(rows)} rows, the model needs {info.window}")
    try:
        values = [[float(row[n]) for n in names] for row in rows[-info.window :]]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return np.array(values, dtype=np.float64)[None]


def windows_from_json(path: Path, info: pb.ModelInfo) -> np.ndarray:
    """``[[row, ...], ...]`` (one window), ``[[[...]]]`` (several) or ``{"windows": ...}``."""
    body = json.loads(path.read_text())
    if isinstance(body, dict):
        body = body.get("windows")
    array = np.asarray(body, dtype=np.float64)
    per_window = info.window * len(info.feature_names)
    if array.size % per_window or array.size == 0:
        raise ValueError(f"{path}: {array.size} values is not a multiple of {per_window}")
    return array.reshape(-1, info.window, len(info.feature_names))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Call the forecast service: model info, health, or forecasts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("FORECAST_TARGET", "localhost:50051"),
        help="server address host:port [FORECAST_TARGET]",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    parser.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca)")
    parser.add_argument("--ca", type=Path, help="PEM CA bundle that signed the server cert")
    parser.add_argument("--cert", type=Path, help="PEM client certificate (mTLS)")
    parser.add_argument("--key", type=Path, help="PEM client key (mTLS)")
    parser.add_argument("--server-name", help="TLS name to verify instead of the target host")
    parser.add_argument(
        "--token",
        default=os.environ.get("FORECAST_AUTH_TOKEN"),
        help="bearer token [FORECAST_AUTH_TOKEN]",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print model version, features, window, horizon, metrics")
    h = sub.add_parser("health", help="print the health status; exit 0 only when SERVING")
    h.add_argument("--service", default="", help=f"'' (whole server) or {SERVICE_NAME}")
    f = sub.add_parser("forecast", help="forecast from a CSV (last window rows) or JSON file")
    source = f.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="CSV with a header naming the feature columns")
    source.add_argument("--json", type=Path, help="JSON windows in training units")
    f.add_argument(
        "--levels",
        type=_levels,
        default=(),
        help="prediction interval levels in percent, comma-separated, e.g. 80,95 (printed as "
        "intervals: lo and hi per window and step); none: point forecasts only",
    )
    f.add_argument(
        "--series-id",
        default="",
        help="the series the windows belong to (Window.series_id), for realized-accuracy "
        "tracking; at most 256 bytes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    credentials = None
    if args.tls or args.ca or args.cert:
        try:
            credentials = channel_credentials(args.ca, args.cert, args.key)
        except OSError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
    client = ForecastClient(
        args.target,
        credentials=credentials,
        token=args.token,
        timeout=args.timeout,
        server_name=args.server_name,
    )
    try:
        if args.command == "health":
            status = client.health(args.service)
            print(status)
            return 0 if status == "SERVING" else 1
        info = client.info()
        if args.command == "info":
            from google.protobuf import json_format

            print(json_format.MessageToJson(info, preserving_proto_field_name=True))
            return 0
        source = args.csv or args.json
        if not source.is_file():
            print(f"{PROG}: error: no such file: {source}", file=sys.stderr)
            return 2
        loader = windows_from_csv if args.csv else windows_from_json
        windows = loader(source, info)
        response = client.forecast_response(windows, levels=args.levels, series_id=args.series_id)
        body: dict[str, Any] = {
            "model_version": response.model_version,
            "target": info.target,
            "forecasts": forecasts_from_response(response).tolist(),
        }
        if args.levels:
            body["intervals"] = intervals_from_response(response)
        print(json.dumps(body))
        return 0
    except grpc.RpcError as exc:
        print(f"{PROG}: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
