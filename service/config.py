"""Service settings: one dataclass, every field a ``--flag`` with a ``FORECAST_*`` env-var twin.

Precedence: command-line flag > environment variable > default. Defaults live here only.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.cli import Parser, int_list

ENV_PREFIX = "FORECAST_"


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _buckets(text: str) -> tuple[int, ...]:
    """Batch buckets are a set: ``"8,2,2"`` -> ``(2, 8)``."""
    return int_list(
        text,
        unique_sorted=True,
        too_small=f"expected comma-separated positive integers, got {text!r}",
    )


@dataclass(frozen=True)
class Settings:
    artifacts: Path = _setting(
        Path("artifacts"),
        "a version directory (pinned: never replaced), or the base directory: the newest "
        "valid version is served, and versions published there later are evaluated in the "
        "shadow of the serving one and promoted if healthy (see --poll-seconds)",
    )
    poll_seconds: float = _setting(
        5.0,
        "how often the artifacts base directory is checked for newly published versions "
        "(0 = never; ModelAdmin can still switch versions)",
    )
    shadow_windows: int = _setting(
        256,
        "live windows a new version runs in the shadow of the serving one (its answers never "
        "returned) before it is promoted, or rejected if it collapsed or did worse",
    )
    shadow_max_error_ratio: float = _setting(
        1.1,
        "a candidate whose realized MAE on the shadowed windows of series with a series_id "
        "exceeds this multiple of the serving version's on the same windows is rejected",
    )
    promote_without_traffic: bool = _setting(
        False,
        "promote a new version as soon as it is loaded and compiled, without shadow "
        "evaluation (off: with no traffic a candidate waits)",
    )
    workers: int = _setting(
        0,
        "serving processes sharing the gRPC port (SO_REUSEPORT), each with its own event loop, "
        "batcher, model and detectors, behind one /metrics; 0 = one per usable core (CPU "
        "affinity and cgroup quota), at most one per GiB of available memory; 1 = one process",
    )
    address: str = _setting("0.0.0.0:50051", "gRPC listen address (host:port; port 0 = any)")
    model_name: str = _setting(
        "forecast",
        "the model's name in the Open Inference Protocol (v2) service "
        "inference.GRPCInferenceService, served on the same port as forecast.v1",
    )
    metrics_port: int = _setting(9464, "Prometheus /metrics port (0 = any free port, -1 = off)")
    metrics_address: str = _setting("0.0.0.0", "Prometheus /metrics listen address")
    max_batch_size: int = _setting(
        128, "most windows merged into one model call; the largest padding bucket"
    )
    batch_buckets: tuple[int, ...] = _setting(
        (1, 2, 4, 8, 16, 32, 64, 128),
        "batch sizes a model call is padded up to (XLA compiles one program per bucket)",
        parse=_buckets,
    )
    max_wait_ms: float = _setting(
        0.0,
        "extra time a non-full batch waits for more windows; 0 = take what is queued "
        "(batches still form under load while the model is busy)",
    )
    max_queue_windows: int = _setting(
        4096, "windows allowed to wait for the model; beyond it requests get RESOURCE_EXHAUSTED"
    )
    max_windows_per_request: int = _setting(1024, "windows allowed in one ForecastRequest")
    max_message_bytes: int = _setting(
        16 * 1024 * 1024, "largest gRPC message accepted (bigger gets RESOURCE_EXHAUSTED)"
    )
    max_concurrent_rpcs: int = _setting(
        0, "cap on concurrent RPCs (0 = no cap beyond the queue limit)"
    )
    grace_seconds: float = _setting(
        30.0, "on SIGTERM/SIGINT, time in-flight RPCs get to finish before the server exits"
    )
    jit_compile: bool = _setting(True, "compile the model with XLA (off: plain tf.function)")
    monitoring: bool = _setting(
        True, "run the collapse and drift detectors (serving metrics are always exported)"
    )
    realized_tracking: bool = _setting(
        True,
        "score forecasts against the values later windows of the same series bring "
        "(Window.series_id; off: series ids are checked but not tracked)",
    )
    max_tracked_series: int = _setting(
        100_000,
        "series whose last window is kept for realized accuracy; beyond it the least recently "
        "used is dropped",
    )
    on_collapse: str = _setting(
        "alert",
        "alert: only raise forecast_output_collapsed; unready: also turn gRPC health "
        "NOT_SERVING while collapsed (never the default: a fleet must not all drop at once)",
        choices=("alert", "unready"),
    )
    tls_cert: Path | None = _setting(None, "PEM server certificate; enables TLS with --tls-key")
    tls_key: Path | None = _setting(None, "PEM private key of the server certificate")
    tls_client_ca: Path | None = _setting(
        None, "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"
    )
    auth_token: str | None = _setting(
        None,
        "require 'authorization: Bearer <token>' on every RPC except health checks "
        "(prefer the FORECAST_AUTH_TOKEN env var: flags show up in ps)",
    )
    admin_token: str | None = _setting(
        None,
        "bearer token of the forecast.v1.ModelAdmin service (list and switch versions); "
        "default: --auth-token. With neither, ModelAdmin is open, as the forecast RPCs are "
        "(prefer the FORECAST_ADMIN_TOKEN env var)",
    )
    log_level: str = _setting(
        "INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )

    def validate(self) -> None:
        """Raise ValueError with a one-line message on inconsistent settings."""
        if self.workers < 0:
            raise ValueError("--workers must be >= 0 (0 = one per usable core)")
        if self.max_batch_size < 1:
            raise ValueError("--max-batch-size must be >= 1")
        if max(self.batch_buckets) < self.max_batch_size:
            raise ValueError("--batch-buckets must include a bucket >= --max-batch-size")
        if self.max_windows_per_request < 1 or self.max_queue_windows < 1:
            raise ValueError("--max-windows-per-request and --max-queue-windows must be >= 1")
        if self.max_windows_per_request > self.max_queue_windows:
            raise ValueError(
                "--max-windows-per-request cannot exceed --max-queue-windows "
                "(such a request could never be queued)"
            )
        if not self.model_name.strip():
            raise ValueError("--model-name must not be empty")
        if self.max_tracked_series < 1:
            raise ValueError("--max-tracked-series must be >= 1")
        if self.poll_seconds < 0:
            raise ValueError("--poll-seconds must be >= 0")
        if self.shadow_windows < 1:
            raise ValueError("--shadow-windows must be >= 1")
        if not self.shadow_max_error_ratio > 0:
            raise ValueError("--shadow-max-error-ratio must be > 0")
        if self.grace_seconds < 0 or self.max_wait_ms < 0:
            raise ValueError("--grace-seconds and --max-wait-ms must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"no such file: {path}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _converter(f: Field[Any]) -> Callable[[str], Any]:
    if "parse" in f.metadata:
        parse: Callable[[str], Any] = f.metadata["parse"]
        return parse
    kind = str(f.type)
    if kind.startswith("bool"):
        return _parse_bool
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    if "Path" in kind:
        return Path
    return str


def build_parser(prog: str = "python -m service") -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description="Serve forecasts from a trained artifact version over gRPC, with dynamic "
        "micro-batching on an XLA-compiled model, health checks, reflection, TLS and auth, "
        "and Prometheus metrics. Every flag has an environment-variable twin (shown in "
        "brackets); a flag wins over its variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Settings):
        convert = _converter(f)

        def parse(text: str, convert: Callable[[str], Any] = convert) -> Any:
            try:
                return convert(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"{exc}") from None

        parse.__name__ = f.name
        default = f.default if f.default is not MISSING else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            _flag(f.name),
            type=parse,
            default=shown,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} [{env_name(f.name)}]",
        )
    return parser


def load_settings(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Flags over env vars over defaults. Raises SystemExit(2) with one line on bad input."""
    environ: Mapping[str, str] = os.environ if env is None else env
    parser = build_parser()
    defaults: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is None or raw == "":
            continue
        try:
            defaults[f.name] = _converter(f)(raw)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{env_name(f.name)}: {exc}")
        choices = f.metadata.get("choices")
        if choices and defaults[f.name] not in choices:
            parser.error(f"{env_name(f.name)}: {raw!r} is not one of {', '.join(choices)}")
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name)
        is_text = _converter(f) is str or f.name in ("auth_token", "admin_token")
        if isinstance(value, str) and not is_text:
            value = _converter(f)(value)  # an untouched default shown as text in --help
        values[f.name] = value
    settings = Settings(**values)
    try:
        settings.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return settings
