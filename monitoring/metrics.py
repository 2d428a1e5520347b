"""Prometheus metrics of one service instance, built on a registry passed in (no global state).

:class:`ServingMetrics` holds the request/batch metrics the service updates directly. The
detectors' metrics come from :class:`monitoring.monitor.PredictionMonitor`, a custom collector;
the realized-accuracy counters from :class:`RealizedAccuracyMetrics`, a custom collector over
:class:`monitoring.realized.RealizedTotals` read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.realized import OUTCOMES, RealizedTotals

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
        self._info = Gauge(
            "forecast_model_info",
            "The served model version (value is always 1).",
            sorted(model_labels),
            registry=registry,
        )
        self.set_model(model_labels)

    def set_model(self, model_labels: dict[str, str]) -> None:
        """The serving version changed: one ``forecast_model_info`` series, the new one's."""
        self._info.clear()
        self._info.labels(**model_labels).set(1)

    def record_rpc(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.duration.labels(method).observe(seconds)

    def record_batch(self, windows: int) -> None:
        self.batch_size.observe(windows)
        self.windows.inc(windows)


# Realized-accuracy counters: (name, RealizedTotals attribute, help).
REALIZED_COUNTERS = (
    ("forecast_realized_values", "values", "Forecast values scored against their actual value."),
    (
        "forecast_realized_abs_error",
        "abs_error",
        "Sum of |forecast - actual| over the scored values, target units.",
    ),
    (
        "forecast_realized_persistence_abs_error",
        "persistence_abs_error",
        "Sum of |persistence - actual| over the scored values, target units (persistence: the "
        "last target value of the window the forecast was made from).",
    ),
    (
        "forecast_realized_squared_error",
        "squared_error",
        "Sum of (forecast - actual)^2 over the scored values, squared target units.",
    ),
    (
        "forecast_realized_evicted_series",
        "evicted_series",
        "Tracked series dropped as least recently used (--max-tracked-series).",
    ),
    (
        "forecast_realized_dropped_windows",
        "dropped_windows",
        "Windows with a series_id left untracked because scoring fell behind.",
    ),
)


class RealizedAccuracyMetrics(Collector):
    """Realized accuracy, as monotonic counters that sum across replicas: forecast values
    scored against the actual values that arrived later, their absolute and squared errors and
    the persistence forecast's absolute error (target units), and interval coverage per level.

    ``totals`` is called at every scrape (it scores what waits first). Registered on
    ``registry`` here."""

    def __init__(self, registry: CollectorRegistry, totals: Callable[[], RealizedTotals]) -> None:
        self._totals = totals
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        t = self._totals()
        for name, attribute, help_text in REALIZED_COUNTERS:
            yield CounterMetricFamily(name, help_text, value=getattr(t, attribute))
        windows = CounterMetricFamily(
            "forecast_realized_windows",
            "Windows with a series_id, by outcome: continued (its series' last window, whose "
            "forecasts were scored), restarted (it did not continue it), new (series not tracked).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            windows.add_metric([outcome], t.windows.get(outcome, 0))
        yield windows
        yield GaugeMetricFamily(
            "forecast_realized_tracked_series", "Series tracked now.", value=t.tracked_series
        )
        scored = CounterMetricFamily(
            "forecast_interval_scored",
            "Actual values that had an interval at this level (percent).",
            labels=["level"],
        )
        covered = CounterMetricFamily(
            "forecast_interval_covered",
            "Actual values inside their interval at this level (percent), bounds included.",
            labels=["level"],
        )
        nominal = GaugeMetricFamily(
            "forecast_interval_nominal_coverage_ratio",
            "The coverage an interval level promises: level / 100.",
            labels=["level"],
        )
        for level, tally in t.intervals.items():
            scored.add_metric([level], tally.scored)
            covered.add_metric([level], tally.covered)
            nominal.add_metric([level], t.nominal[level])
        yield scored
        yield covered
        yield nominal


# Why a published version was not considered (training.manifest.ArtifactError reasons, and
# "incompatible" also for a request contract that differs from the serving version's).
IGNORED_REASONS = ("incomplete", "checksum", "incompatible", "invalid")
PROMOTION_RESULTS = ("promoted", "rejected")
# Why a candidate failed its shadow evaluation.
REJECTION_REASONS = ("collapsed", "worse_than_serving", "failed")


class LifecycleMetrics:
    """New versions: ignored, evaluated in the shadow of the serving one, promoted or rejected.
    Every label set is known up front except the candidate's version, of which at most one
    series exists at a time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ignored = Counter(
            "forecast_model_versions_ignored",
            "Published versions ignored, by reason: incomplete (still being copied), checksum "
            "(tampered or corrupt), incompatible (format or request contract), invalid.",
            ["reason"],
            registry=registry,
        )
        self.promotions = Counter(
            "forecast_model_promotions",
            "Shadow-evaluation verdicts on candidate versions: promoted or rejected.",
            ["result"],
            registry=registry,
        )
        self.rejections = Counter(
            "forecast_model_rejections",
            "Rejected candidates by reason: collapsed (the collapse detector fired on its "
            "outputs), worse_than_serving (realized error above the serving version's on the "
            "same windows), failed (it could not forecast).",
            ["reason"],
            registry=registry,
        )
        self.candidate = Gauge(
            "forecast_candidate_info",
            "1 for the version under shadow evaluation; absent when there is none.",
            ["version"],
            registry=registry,
        )
        self.switches = Counter(
            "forecast_model_switches",
            "Changes of the serving version, by trigger: shadow (promoted after its shadow "
            "evaluation), warm (promoted without traffic, --promote-without-traffic), admin "
            "(ModelAdmin.SetServingVersion).",
            ["trigger"],
            registry=registry,
        )
        for reason in IGNORED_REASONS:
            self.ignored.labels(reason)
        for result in PROMOTION_RESULTS:
            self.promotions.labels(result)
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for trigger in ("shadow", "warm", "admin"):
            self.switches.labels(trigger)

    def set_candidate(self, version: str | None) -> None:
        """The version under evaluation now (None: none)."""
        self.candidate.clear()
        if version is not None:
            self.candidate.labels(version).set(1)


def start_metrics_server(
    registry: CollectorRegistry, address: str, port: int
) -> tuple[WSGIServer, int]:
    """Serve ``/metrics`` in a background thread. Returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server, server.server_port
