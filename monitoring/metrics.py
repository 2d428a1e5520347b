"""Prometheus metrics of one service instance, built on a registry passed in (no global state).

:class:`ServingMetrics` holds the request/batch metrics the service updates directly. The
detectors' metrics come from :class:`monitoring.monitor.PredictionMonitor`, a custom collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Status codes the service can produce; their series exist from start-up (bounded cardinality).
KNOWN_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNAUTHENTICATED",
    "INTERNAL",
)
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        methods: Iterable[str],
        model_labels: dict[str, str],
        queue_depth: Callable[[], float] | None = None,
    ) -> None:
        """``methods``: the RPC names whose request series exist from start-up, one per known
        status code (the service passes its forecast RPCs; monitoring knows no RPC names).
        ``queue_depth`` is read at scrape time."""
        self.requests = Counter(
            "forecast_requests",
            "Finished RPCs by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "forecast_request_duration_seconds",
            "RPC handling time in seconds.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for method in methods:
            self.duration.labels(method)
            for code in KNOWN_CODES:
                self.requests.labels(method, code)
        self.batch_size = Histogram(
            "forecast_batch_size",
            "Windows per model call (after merging, before padding).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.windows = Counter(
            "forecast_windows", "Windows forecast by the model.", registry=registry
        )
        self.queue_depth = Gauge(
            "forecast_queue_depth", "Windows waiting for the model.", registry=registry
        )
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        info = Gauge(
            "forecast_model_info",
            "The served model version (value is always 1).",
            sorted(model_labels),
            registry=registry,
        )
        info.labels(**model_labels).set(1)

    def record_rpc(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.duration.labels(method).observe(seconds)

    def record_batch(self, windows: int) -> None:
        self.batch_size.observe(windows)
        self.windows.inc(windows)


def start_metrics_server(
    registry: CollectorRegistry, address: str, port: int
) -> tuple[WSGIServer, int]:
    """Serve ``/metrics`` in a background thread. Returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server, server.server_port
