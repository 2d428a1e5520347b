"""Merging the workers' expositions into the instance's (monitoring.workers), on expositions
written by prometheus-client itself from the real metric classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.metrics import ServingMetrics
from monitoring.workers import RetiredCounters, merge, parse

METHODS = ("Forecast",)


class Fixed(Collector):
    """Detector gauges with given values, as a worker's monitor exports them."""

    def __init__(self, gauges: dict[str, float], drift: dict[str, dict[str, float]]) -> None:
        self.gauges = gauges
        self.drift = drift

    def collect(self):
        for name, value in self.gauges.items():
            yield GaugeMetricFamily(name, name, value=value)
        for name, per_feature in self.drift.items():
            family = GaugeMetricFamily(name, name, labels=["feature"])
            for feature, value in per_feature.items():
                family.add_metric([feature], value)
            yield family


def worker(
    *,
    windows: int,
    requests: int,
    latencies: tuple[float, ...] = (),
    collapsed: float = 0.0,
    responsiveness: float = 1.0,
    drift: dict[str, dict[str, float]] | None = None,
    queue: float = 0.0,
    version: str = "v1",
) -> list[Metric]:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry, methods=METHODS, model_labels={"version": version})
    metrics.record_batch(windows)
    for i in range(requests):
        metrics.record_rpc("Forecast", "OK", latencies[i % len(latencies)] if latencies else 0.001)
    metrics.queue_depth.set(queue)
    gauges = {
        "forecast_output_collapsed": collapsed,
        "forecast_prediction_responsiveness_ratio": responsiveness,
        "forecast_prediction_variance_ratio": responsiveness * 0.9,
    }
    registry.register(Fixed(gauges, drift or {}))
    return parse(generate_latest(registry).decode())


def sample(families: list[Metric], name: str, **labels: str) -> float:
    for family in families:
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise KeyError((name, labels))


def test_counters_and_histograms_are_summed_and_created_is_the_earliest():
    a = worker(windows=30, requests=5, latencies=(0.001, 0.2))
    b = worker(windows=12, requests=3, latencies=(0.03,))
    merged = merge([a, b])

    assert sample(merged, "forecast_windows_total") == 42
    assert sample(merged, "forecast_requests_total", method="Forecast", code="OK") == 8
    assert sample(merged, "forecast_requests_total", method="Forecast", code="INTERNAL") == 0
    count = "forecast_request_duration_seconds_count"
    assert sample(merged, count, method="Forecast") == 8
    bucket = "forecast_request_duration_seconds_bucket"
    assert sample(merged, bucket, method="Forecast", le="0.001") == 3  # a's 1 ms calls
    assert sample(merged, bucket, method="Forecast", le="0.05") == 6
    assert sample(merged, bucket, method="Forecast", le="+Inf") == 8
    total = sample(a, "forecast_request_duration_seconds_sum", method="Forecast") + sample(
        b, "forecast_request_duration_seconds_sum", method="Forecast"
    )
    assert sample(merged, "forecast_request_duration_seconds_sum", method="Forecast") == (
        pytest.approx(total)
    )
    created = "forecast_windows_created"
    assert sample(merged, created) == min(sample(a, created), sample(b, created))
    # The merged families render again as a valid exposition.
    assert parse(render(merged))


def render(families: list[Metric]) -> str:
    class Merged(Collector):
        def collect(self):
            yield from families

    registry = CollectorRegistry()
    registry.register(Merged())
    return generate_latest(registry).decode()


def test_collapse_gauges_come_together_from_the_worst_worker():
    healthy = worker(windows=1, requests=1, responsiveness=0.8)
    weak = worker(windows=1, requests=1, responsiveness=0.3)
    collapsed = worker(windows=1, requests=1, collapsed=1.0, responsiveness=0.5)

    merged = merge([healthy, collapsed, weak])
    assert sample(merged, "forecast_output_collapsed") == 1
    assert sample(merged, "forecast_prediction_responsiveness_ratio") == 0.5  # the same worker's
    assert sample(merged, "forecast_prediction_variance_ratio") == pytest.approx(0.45)

    merged = merge([healthy, weak])  # none collapsed: the lowest responsiveness
    assert sample(merged, "forecast_output_collapsed") == 0
    assert sample(merged, "forecast_prediction_responsiveness_ratio") == 0.3

    starting = worker(windows=1, requests=1, responsiveness=math.nan)  # no data yet
    merged = merge([starting, healthy])
    assert sample(merged, "forecast_prediction_responsiveness_ratio") == 0.8


def test_drift_is_reported_per_feature_from_the_worst_worker():
    a = worker(
        windows=1,
        requests=1,
        drift={
            "forecast_input_drifted": {"load": 1.0, "temp": 0.0},
            "forecast_input_mean_zscore": {"load": 4.0, "temp": 0.1},
            "forecast_input_out_of_range_ratio": {"load": 0.2, "temp": 0.0},
        },
    )
    b = worker(
        windows=1,
        requests=1,
        drift={
            "forecast_input_drifted": {"load": 0.0, "temp": 0.0},
            "forecast_input_mean_zscore": {"load": 0.2, "temp": -2.5},
            "forecast_input_out_of_range_ratio": {"load": 0.0, "temp": 0.0},
        },
    )
    merged = merge([a, b])
    assert sample(merged, "forecast_input_drifted", feature="load") == 1
    assert sample(merged, "forecast_input_mean_zscore", feature="load") == 4.0
    assert sample(merged, "forecast_input_mean_zscore", feature="temp") == -2.5  # b's larger shift
    assert sample(merged, "forecast_input_drifted", feature="temp") == 0


def test_other_gauges_are_summed_or_united():
    a = worker(windows=1, requests=1, queue=3, version="v1")
    b = worker(windows=1, requests=1, queue=4, version="v2")
    merged = merge([a, b])
    assert sample(merged, "forecast_queue_depth") == 7
    assert sample(merged, "forecast_model_info", version="v1") == 1
    assert sample(merged, "forecast_model_info", version="v2") == 1


def test_a_replaced_workers_counts_are_carried_so_sums_never_go_backwards():
    old = worker(windows=50, requests=10)
    other = worker(windows=20, requests=4)
    retired = RetiredCounters()
    before = sample(merge([old, other], retired), "forecast_windows_total")
    retired.retire(old)
    fresh = worker(windows=3, requests=1)

    merged = merge([fresh, other], retired)

    assert before == 70
    assert sample(merged, "forecast_windows_total") == 73
    assert sample(merged, "forecast_requests_total", method="Forecast", code="OK") == 15
    assert sample(merged, "forecast_output_collapsed") == 0  # gauges are not carried
    counts = np.array([before, sample(merged, "forecast_windows_total")])
    assert np.all(np.diff(counts) >= 0)


def test_counters_only_a_replaced_worker_had_are_kept():
    old = worker(windows=5, requests=2)
    registry = CollectorRegistry()
    ServingMetrics(registry, methods=("ModelInfer",), model_labels={"version": "v1"}).record_rpc(
        "ModelInfer", "OK", 0.01
    )
    old += [f for f in parse(generate_latest(registry).decode()) if "requests" in f.name]
    retired = RetiredCounters()
    retired.retire(old)
    fresh = worker(windows=1, requests=1)  # has no ModelInfer series

    merged = merge([fresh], retired)

    assert sample(merged, "forecast_requests_total", method="ModelInfer", code="OK") == 1
    assert sample(merged, "forecast_windows_total") == 6
    assert parse(render(merged))
