"""``python -m service.client``: call the forecast service from the shell, or import it.

    python -m service.client info
    python -m service.client health
    python -m service.client forecast --csv data.csv        # the last `window` rows
    python -m service.client forecast --json windows.json   # [[...], ...] or {"windows": ...}
    python -m service.client forecast --csv data.csv --levels 80,95 --series-id S

Model versions (the ``forecast.v1.ModelAdmin`` service; admin calls send ``--admin-token``
[FORECAST_ADMIN_TOKEN], else ``--token``)::

    python -m service.client versions                  # every version on disk, serving one *
    python -m service.client use 20261124T101530.123456Z   # serve it now: the rollback

``use`` loads, compiles and warms the version up before it answers (a few seconds; it waits up
to the larger of --timeout and 120 s), then every request that arrives after it is answered by
that version. There is no shadow evaluation: the operator decides.

Exit codes: 0 done; 1 the server refused or failed the call (one line on stderr: status and
message), or ``health`` not SERVING; 2 bad flags or input files (one line on stderr).

As a library::

    from service.client import ForecastClient
    with ForecastClient("localhost:50051") as client:
        info = client.info()
        forecasts = client.forecast(windows)   # numpy [n, window, features] -> [n, horizon]
        response = client.forecast_response(windows, levels=(80, 95))  # with intervals
    with ForecastClient("localhost:50051", admin_token="...") as client:
        listed = client.versions()             # ListVersionsResponse
        switched = client.use(listed.versions[0].version)  # SetServingVersionResponse
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
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
DEFAULT_TARGET = "localhost:50051"
# SetServingVersion answers once the version is loaded, compiled and warm: it gets at least this
# long, whatever the (forecast-sized) per-call timeout.
SWITCH_TIMEOUT_S = 120.0
# ModelVersion.status values (service.lifecycle).
AVAILABLE, IGNORED = "available", "ignored"

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
        admin_token: str | None = None,
        timeout: float = 10.0,
        server_name: str | None = None,
        retry: bool = True,
    ):
        """``token`` is sent with the forecast RPCs, ``admin_token`` (default: ``token``) with
        the ModelAdmin ones; ``timeout`` is the per-call deadline in seconds."""
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
        self._admin = pb_grpc.ModelAdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = _bearer(token)
        self._admin_metadata = _bearer(admin_token or token)
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

    def versions(self) -> pb.ListVersionsResponse:
        """Every version under the server's artifacts directory, oldest first, with its status
        (ModelAdmin.ListVersions)."""
        response: pb.ListVersionsResponse = self._admin.ListVersions(
            pb.ListVersionsRequest(), metadata=self._admin_metadata, timeout=self._timeout
        )
        return response

    def use(self, version: str, *, timeout: float | None = None) -> pb.SetServingVersionResponse:
        """Serve ``version`` from the next request on, without shadow evaluation
        (ModelAdmin.SetServingVersion). Returns once it is loaded, compiled and serving; waits
        up to ``timeout`` seconds (default: the larger of the client's timeout and
        :data:`SWITCH_TIMEOUT_S`). NOT_FOUND: no such version; FAILED_PRECONDITION: it cannot
        be served, or the server runs one pinned version."""
        response: pb.SetServingVersionResponse = self._admin.SetServingVersion(
            pb.SetServingVersionRequest(version=version),
            metadata=self._admin_metadata,
            timeout=max(self._timeout, SWITCH_TIMEOUT_S) if timeout is None else timeout,
        )
        return response


def _bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


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


def _number(value: float) -> str:
    return f"{value:.4g}"


def format_versions(response: pb.ListVersionsResponse, again: str = PROG) -> str:
    """The ``versions`` table: one row per version, oldest first, the serving one marked ``*``,
    then the next step. ``again`` is the command line that reaches this server (its hints)."""
    serving = response.serving_version
    header = ("", "VERSION", "STATUS", "CREATED", "TEST MAE", "VS PERSISTENCE", "REASON")
    rows = [header]
    for v in response.versions:
        mae = ratio = "-"
        if v.HasField("test"):
            mae = _number(v.test.mae)
            if v.test.persistence_mae > 0:
                ratio = f"{v.test.mae / v.test.persistence_mae:.2f}x"
        rows.append(
            (
                "*" if v.version == serving else "",
                v.version,
                v.status,
                v.created_at or "-",
                mae,
                ratio,
                v.reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    right = {4, 5}  # numbers
    lines = [
        "  ".join(
            [
                *(
                    cell.rjust(width) if i in right else cell.ljust(width)
                    for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
                ),
                row[-1],
            ]
        ).rstrip()
        for row in rows
    ]
    where = (
        f"versions under {response.artifacts} (* serving; VS PERSISTENCE: test MAE / "
        "persistence MAE, below 1x beats it):"
        if response.artifacts
        else "the server runs one pinned version (* serving):"
    )
    return "\n".join([where, *lines, _versions_hint(response, again)])


def _versions_hint(response: pb.ListVersionsResponse, again: str) -> str:
    serving = response.serving_version
    if not response.artifacts:
        return (
            f"{serving} is pinned: start the server on the artifacts base directory instead of "
            "a version directory to switch versions"
        )
    usable = [v for v in response.versions if v.version != serving and v.status != IGNORED]
    older = [v for v in usable if v.version < serving]
    if older:
        pick = next((v for v in reversed(older) if v.status == AVAILABLE), older[-1])
        return f"roll back with: {again} use {pick.version}"
    if usable:
        return f"switch with: {again} use {usable[-1].version}"
    return f"nothing to switch to: {serving} is the only usable version under {response.artifacts}"


def format_switch(response: pb.SetServingVersionResponse, again: str = PROG) -> str:
    """What ``use`` prints: the switch, then how to check it and how to undo it."""
    new, previous = response.model_version, response.previous_version
    if new == previous:
        return f"already serving {new}; nothing changed\ncheck with: {again} info"
    return (
        f"now serving {new} (was {previous})\n"
        f"check with: {again} info (model_version: {new})\n"
        f"undo with: {again} use {previous}"
    )


def _again(args: argparse.Namespace, default_target: str) -> str:
    """``PROG`` with the connection options of this invocation, for printed hints; never a
    token (those come from the environment or are typed again)."""
    options: list[str] = []
    if args.target != default_target:
        options += ["--target", args.target]
    if args.tls and not (args.ca or args.cert):
        options.append("--tls")
    for flag, value in (
        ("--ca", args.ca),
        ("--cert", args.cert),
        ("--key", args.key),
        ("--server-name", args.server_name),
    ):
        if value:
            options += [flag, str(value)]
    return " ".join([PROG, *map(shlex.quote, options)])


ADMIN_COMMANDS = ("versions", "use")
SECRET_OPTIONS = ("token", "admin_token")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (but never a token's, which may come from the environment); epilogs kept
    as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest in SECRET_OPTIONS:
            return action.help
        return super()._get_help_string(action)


EPILOG = """\
examples:
  python -m service.client info
  python -m service.client forecast --csv recent.csv --levels 80,95
  python -m service.client versions        # the versions on disk, the serving one marked *
  python -m service.client use VERSION     # serve VERSION now (rollback; load + compile)

exit codes: 0 done; 1 the server refused or failed the call (one line: status and message),
or health not SERVING; 2 bad flags or input files (one line)
"""

VERSIONS_EPILOG = """\
statuses: serving; candidate (a new version under shadow evaluation); rejected (it failed the
evaluation: the reason says why; `use` can still serve it); available (valid, not serving);
ignored (cannot be served: the reason says why).
TEST MAE is the version's error on its test split at training, in target units;
VS PERSISTENCE divides it by the persistence forecast's (below 1x: better than repeating the
last value). The last line says what to run next.
"""

USE_EPILOG = """\
The server loads, verifies, compiles and warms the version up before it answers, which takes
a few seconds (the call waits up to the larger of --timeout and 120 s); forecasts are answered
by the old version meanwhile and by the new one from the next request after the answer. There
is no shadow evaluation: this is the operator's rollback (or roll-forward). A candidate under
evaluation is abandoned. Errors: NOT_FOUND (no such version: see `versions`),
FAILED_PRECONDITION (it cannot be served, or the server runs one pinned version).

example:
  python -m service.client use 20261124T101530.123456Z
  python -m service.client info     # model_version: 20261124T101530.123456Z
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Call the forecast service: model info, health, forecasts, model versions.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("FORECAST_TARGET", DEFAULT_TARGET),
        help="server address host:port [FORECAST_TARGET]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help=f"per-call deadline, seconds (use: at least {SWITCH_TIMEOUT_S:g})",
    )
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
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("FORECAST_ADMIN_TOKEN"),
        help="bearer token for the admin commands, versions and use (the server's "
        "--admin-token, else its --auth-token) [FORECAST_ADMIN_TOKEN]; default: --token",
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
    sub.add_parser(
        "versions",
        help="list the model versions on the server, the serving one marked *, and what to "
        "run next",
        description="List every version under the server's artifacts directory, oldest first:\n"
        "status, training time, test MAE and its ratio to persistence's, and why a version\n"
        "was rejected or ignored (ModelAdmin.ListVersions).",
        epilog=VERSIONS_EPILOG,
        formatter_class=_HelpFormatter,
    )
    u = sub.add_parser(
        "use",
        help="serve VERSION now, without shadow evaluation (rollback); takes a few seconds",
        description="Switch the server to VERSION (ModelAdmin.SetServingVersion) and print the\n"
        "version it replaced.",
        epilog=USE_EPILOG,
        formatter_class=_HelpFormatter,
    )
    u.add_argument("version", metavar="VERSION", help="a version name, as `versions` lists it")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    again = _again(args, parser.get_default("target"))
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
        admin_token=args.admin_token,
        timeout=args.timeout,
        server_name=args.server_name,
    )
    try:
        if args.command == "versions":
            print(format_versions(client.versions(), again))
            return 0
        if args.command == "use":
            print(format_switch(client.use(args.version), again))
            return 0
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
        hint = _error_hint(args.command, exc.code(), again)
        print(f"{PROG}: error: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def _error_hint(command: str, code: grpc.StatusCode, again: str) -> str:
    """What to change after an admin call failed ('' when the message says it all)."""
    if command not in ADMIN_COMMANDS:
        return ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            " (admin calls send --admin-token [FORECAST_ADMIN_TOKEN], else --token: the "
            "server's --admin-token, else its --auth-token)"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return f" (list them with: {again} versions)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and command == "use":
        return (
            " (loading and compiling took longer: allow more with --timeout, then check with: "
            f"{again} versions)"
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())
