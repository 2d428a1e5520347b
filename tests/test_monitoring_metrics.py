"""Metric names, labels and values on a fresh registry per test (no global state)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.metrics import KNOWN_CODES, ServingMetrics
from monitoring.monitor import PredictionMonitor
from service.api import FORECAST_METHODS
from training.artifacts import load_artifacts

LABELS = {
    "version": "v1",
    "target": "load",
    "window": "24",
    "horizon": "1",
    "target_mode": "delta",
    "device": "CPU",
}


@pytest.fixture(scope="module")
def manifest(trained_version):
    return load_artifacts(trained_version).manifest


def test_serving_metrics_count_rpcs_by_method_and_code():
    registry = CollectorRegistry()
    metrics = ServingMetrics(
        registry, methods=FORECAST_METHODS, model_labels=LABELS, queue_depth=lambda: 7
    )

    metrics.record_rpc("Forecast", "OK", 0.002)
    metrics.record_rpc("Forecast", "OK", 0.004)
    metrics.record_rpc("Forecast", "INVALID_ARGUMENT", 0.001)
    metrics.record_batch(12)

    get = registry.get_sample_value
    assert get("forecast_requests_total", {"method": "Forecast", "code": "OK"}) == 2
    assert get("forecast_requests_total", {"method": "Forecast", "code": "INVALID_ARGUMENT"}) == 1
    assert get("forecast_requests_total", {"method": "StreamForecast", "code": "OK"}) == 0
    assert get("forecast_request_duration_seconds_count", {"method": "Forecast"}) == 3
    assert get("forecast_batch_size_count") == 1
    assert get("forecast_batch_size_sum") == 12
    assert get("forecast_windows_total") == 12
    assert get("forecast_queue_depth") == 7
    assert get("forecast_model_info", LABELS) == 1


def test_serving_metrics_create_known_label_sets_upfront():
    registry = CollectorRegistry()
    ServingMetrics(registry, methods=FORECAST_METHODS, model_labels=LABELS)
    for code in KNOWN_CODES:
        assert (
            registry.get_sample_value(
                "forecast_requests_total", {"method": "Forecast", "code": code}
            )
            == 0
        )


def test_two_registries_do_not_share_state():
    first, second = CollectorRegistry(), CollectorRegistry()
    ServingMetrics(first, methods=FORECAST_METHODS, model_labels=LABELS).record_batch(5)
    ServingMetrics(second, methods=FORECAST_METHODS, model_labels=LABELS)
    assert first.get_sample_value("forecast_windows_total") == 5
    assert second.get_sample_value("forecast_windows_total") == 0


def test_prediction_monitor_exports_every_contract_metric(manifest):
    registry = CollectorRegistry()
    monitor = PredictionMonitor(manifest.monitor_spec())
    registry.register(monitor)
    names = manifest.feature_names

    text = generate_latest(registry).decode()

    for metric in (
        "forecast_prediction_variance_ratio",
        "forecast_output_collapsed",
        "forecast_collapse_events_total",
        "forecast_prediction_target_mean",
        "forecast_prediction_standardized_values_total",
        "forecast_prediction_standardized_positive_sum_total",
        "forecast_prediction_standardized_negative_sum_total",
        "forecast_prediction_standardized_squares_total",
    ):
        assert f"\n{metric} " in text, metric
    for metric in (
        "forecast_input_mean_zscore",
        "forecast_input_std_ratio",
        "forecast_input_psi",
        "forecast_input_out_of_range_ratio",
        "forecast_input_drifted",
        "forecast_input_standardized_values_total",
    ):
        for feature in names:
            assert f'{metric}{{feature="{feature}"}}' in text, (metric, feature)


def test_sufficient_statistics_are_standardized_sums(manifest):
    registry = CollectorRegistry()
    monitor = PredictionMonitor(manifest.monitor_spec())
    registry.register(monitor)
    rng = np.random.default_rng(0)
    n, f = 40, len(manifest.feature_names)
    raw = rng.normal(size=(n, manifest.horizon))
    rows = rng.normal(size=(n, f))

    monitor.observe(rows, raw, raw * 100)

    std = np.asarray(manifest.reference.validation_prediction_std)
    z = raw / std
    get = registry.get_sample_value
    assert get("forecast_prediction_standardized_values_total") == z.size
    assert get("forecast_prediction_standardized_positive_sum_total") == pytest.approx(
        z[z > 0].sum()
    )
    assert get("forecast_prediction_standardized_negative_sum_total") == pytest.approx(
        -z[z < 0].sum()
    )
    assert get("forecast_prediction_standardized_squares_total") == pytest.approx((z**2).sum())
    feature = manifest.feature_names[0]
    ref = manifest.reference.features[feature]
    z_in = (rows[:, 0] - ref.mean) / ref.std
    signed = get("forecast_input_standardized_positive_sum_total", {"feature": feature}) - get(
        "forecast_input_standardized_negative_sum_total", {"feature": feature}
    )
    assert signed == pytest.approx(z_in.sum())


def test_sufficient_statistics_never_decrease(manifest):
    """Counters must be monotonic even when every standardized value is negative."""
    registry = CollectorRegistry()
    monitor = PredictionMonitor(manifest.monitor_spec(), update_every=1)
    registry.register(monitor)
    f, h = len(manifest.feature_names), manifest.horizon
    names = [
        f"forecast_prediction_standardized_{part}_total"
        for part in ("values", "positive_sum", "negative_sum", "squares")
    ]
    before = [registry.get_sample_value(n) for n in names]

    monitor.observe(np.full((10, f), -3.0), np.full((10, h), -2.0), np.zeros((10, h)))

    after = [registry.get_sample_value(n) for n in names]
    assert all(a >= b for a, b in zip(after, before, strict=True))
    assert after[1] == before[1]  # no positive part at all
    assert after[2] > before[2]  # the negative part grew


def test_windows_too_extreme_to_forecast_do_not_poison_the_statistics(manifest):
    """Such windows get INVALID_ARGUMENT but still reach the monitor with their batch."""
    registry = CollectorRegistry()
    monitor = PredictionMonitor(manifest.monitor_spec())
    registry.register(monitor)
    rng = np.random.default_rng(2)
    f, h = len(manifest.feature_names), manifest.horizon
    rows, raw = rng.normal(size=(100, f)), rng.normal(size=(100, h))
    rows[3, 0], raw[5, 0], raw[7, 0] = np.inf, np.nan, -np.inf

    monitor.observe(rows, raw, raw.copy())

    get = registry.get_sample_value
    assert get("forecast_monitored_windows_total") == 97
    assert get("forecast_prediction_standardized_values_total") == 97 * h
    assert np.isfinite(get("forecast_prediction_standardized_negative_sum_total"))
    assert np.isfinite(get("forecast_prediction_variance_ratio"))
    for feature in manifest.feature_names:
        assert np.isfinite(get("forecast_input_mean_zscore", {"feature": feature}))


def test_detectors_update_when_enough_windows_wait_or_the_oldest_is_old(manifest):
    now = [0.0]
    registry = CollectorRegistry()
    monitor = PredictionMonitor(
        manifest.monitor_spec(), update_every=64, max_delay=1.0, clock=lambda: now[0]
    )
    registry.register(monitor)
    f, h = len(manifest.feature_names), manifest.horizon

    def batch(n):
        monitor.observe(np.zeros((n, f)), np.zeros((n, h)), np.zeros((n, h)))

    batch(10)
    assert monitor.collapse.pred.count == 0  # buffered
    now[0] = 0.5
    batch(60)
    assert monitor.collapse.pred.count == 70  # 70 windows waiting >= 64
    batch(5)
    now[0] = 1.4
    batch(5)
    assert monitor.collapse.pred.count == 70  # the oldest has waited 0.9 s
    now[0] = 1.5
    batch(5)
    assert monitor.collapse.pred.count == 85  # ... and now 1.0 s
    batch(3)

    assert registry.get_sample_value("forecast_monitored_windows_total") == 88  # scrape applies


def test_collapse_transition_counts_an_event_and_calls_back(manifest):
    changes = []
    registry = CollectorRegistry()
    monitor = PredictionMonitor(manifest.monitor_spec(), on_collapse_change=changes.append)
    registry.register(monitor)
    rng = np.random.default_rng(1)
    f, h = len(manifest.feature_names), manifest.horizon
    assert math.isnan(registry.get_sample_value("forecast_prediction_variance_ratio"))

    monitor.observe(rng.normal(size=(200, f)), np.full((200, h), 0.3), np.zeros((200, h)))

    assert registry.get_sample_value("forecast_output_collapsed") == 1
    assert registry.get_sample_value("forecast_collapse_events_total") == 1
    assert registry.get_sample_value("forecast_prediction_variance_ratio") == pytest.approx(0.0)
    assert changes == [True]

    scale = np.sqrt(manifest.monitoring.collapse.pred_var)
    monitor.observe(
        rng.normal(size=(300, f)), scale * rng.normal(size=(300, h)), np.zeros((300, h))
    )

    assert registry.get_sample_value("forecast_output_collapsed") == 0
    assert changes == [True, False]
    assert registry.get_sample_value("forecast_collapse_events_total") == 1


def test_manifest_without_calibration_gives_no_monitor(manifest):
    stripped = dataclasses.replace(manifest, monitoring=None)
    assert stripped.monitor_spec() is None
