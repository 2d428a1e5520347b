"""End to end: real service processes, scraped by a real Prometheus running alerts.yml.

Three ``python -m service`` processes run side by side, each on OS-chosen gRPC and metrics
ports, and one Prometheus (the Debian binary, loopback, 1 s scrape and evaluation intervals)
scrapes them with ``deploy/prometheus/alerts.yml`` loaded:

* ``collapsed``: a copy of the session's model with its output layer zeroed (constant output),
  re-sealed with correct checksums, receiving varied real windows;
* ``scaled``: the healthy model receiving the same windows multiplied by 10;
* ``healthy``: the healthy model receiving the windows as they are.

Traffic flows from one thread per service until ``ForecastOutputCollapsed`` fires for the
collapsed instance and ``ForecastInputScaleDrift`` for the scaled one; then nothing may have
fired (or even gone pending, for the model-health alerts) for the healthy instance. Prometheus's
``instance`` label (the metrics address) tells the three apart. The same running stack then
serves a second check: every query of the Grafana dashboard returns data.

The windows come from the built-in synthetic series with the session model's training flags,
imputed over the training rows as training did, in time order. They are the validation rows:
the stretch the detectors were calibrated on, so "healthy" means exactly what the model's
manifest calls healthy. (Replaying this short series' training rows or test rows instead leaves
the calibrated drift bands: the series trends upward and its temperature follows the season.)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_process import ServiceProcess
from test_alerts import ALERTS_FILE, PrometheusServer, metric_names
from test_grafana_dashboard import DASHBOARD_FILE, as_promql, expressions

from service.api import FORECAST_METHODS
from service.client import ForecastClient
from training.data import chronological_split, impute, synthetic_series
from training.faults import zero_head
from training.train import build_parser
from training.transform import sliding_windows

pytestmark = pytest.mark.slow

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
ALERT_TIMEOUT_S = 210.0  # from the first request; the drift alert alone needs for: 2m
POLL_INTERVAL_S = 2.0
WINDOWS_PER_REQUEST = 8
REQUEST_PAUSE_S = 0.2  # <= 5 requests (40 windows)/s per service: plenty for the detectors
DRIFT_SCALE = 10.0


MODEL_HEALTH_ALERTS = ("ForecastOutputCollapsed", "ForecastInputScaleDrift")


# -------------------------------------------------------------------------------------------
# Processes and traffic
# -------------------------------------------------------------------------------------------


class Traffic(threading.Thread):
    """Sends ``windows`` in time order, a few per request, round and round, until stopped."""

    def __init__(
        self, name: str, service: ServiceProcess, windows: np.ndarray, stop: threading.Event
    ):
        super().__init__(name=f"traffic-{name}", daemon=True)
        self.service = service
        self.windows = windows
        self.stop_event = stop
        self.requests = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with ForecastClient(self.service.target, timeout=10.0) as client:
            start = 0
            while not self.stop_event.is_set():
                rows = (start + np.arange(WINDOWS_PER_REQUEST)) % len(self.windows)
                try:
                    client.forecast(self.windows[rows])
                    self.requests += 1
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
                start += WINDOWS_PER_REQUEST
                self.stop_event.wait(REQUEST_PAUSE_S)


# -------------------------------------------------------------------------------------------
# Fixtures
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _prometheus_installed(prometheus_binary: str) -> None:
    """Skip (or, in CI, fail) before training or starting anything when it is missing."""


@pytest.fixture(scope="module")
def validation_windows(trained_version: Path, tiny_training_args: list[str]) -> np.ndarray:
    """Raw windows ``[n, window, features]`` over the session model's validation rows."""
    manifest = json.loads((trained_version / "manifest.json").read_text())
    args = build_parser().parse_args(tiny_training_args)
    series = synthetic_series(args.synthetic_steps)
    assert list(series.feature_names) == manifest["feature_names"]
    window, horizon = int(manifest["window"]), int(manifest["horizon"])
    split = chronological_split(
        len(series.values),
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        min_rows=window + horizon + 1,
    )
    values, train_means, _ = impute(series.values, split.train, series.feature_names)
    # The same training rows as training imputed with (it recorded their means).
    np.testing.assert_allclose(train_means, manifest["imputation"]["train_means"])
    rows = values[split.val[0] : split.val[1]]
    return sliding_windows(rows, window, np.arange(window - 1, len(rows)))


@pytest.fixture(scope="module")
def collapsed_version(trained_version: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zero_head(trained_version, tmp_path_factory.mktemp("collapsed-artifacts"))


@pytest.fixture(scope="module")
def services(
    trained_version: Path, collapsed_version: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    workdir = tmp_path_factory.mktemp("services")
    running: dict[str, ServiceProcess] = {}
    try:
        for name, artifacts in (
            ("collapsed", collapsed_version),
            ("scaled", trained_version),
            ("healthy", trained_version),
        ):
            running[name] = ServiceProcess(
                artifacts, workdir / f"service-{name}.log", "--grace-seconds", "1", metrics=True
            )
        for service in running.values():  # all start at once
            service.wait_listening(STARTUP_TIMEOUT_S)
        yield running
    finally:
        for service in running.values():  # all drain at once
            service.terminate()
        for service in running.values():
            service.close(grace=15)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str,
    services: dict[str, ServiceProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS_FILE)],
        "scrape_configs": [
            {
                "job_name": "forecast",
                "static_configs": [{"targets": [s.metrics_target for s in services.values()]}],
            }
        ],
    }
    server = PrometheusServer(prometheus_binary, config, tmp_path_factory.mktemp("prometheus"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def traffic(
    services: dict[str, ServiceProcess], prometheus: PrometheusServer, validation_windows
) -> Iterator[dict[str, Traffic]]:
    for service in services.values():
        service.wait_until_serving(STARTUP_TIMEOUT_S)
    windows = {
        "collapsed": validation_windows,
        "scaled": validation_windows * DRIFT_SCALE,
        "healthy": validation_windows,
    }
    stop = threading.Event()
    senders = {name: Traffic(name, services[name], windows[name], stop) for name in services}
    for sender in senders.values():
        sender.start()
    try:
        yield senders
    finally:
        stop.set()
        for sender in senders.values():
            sender.join(timeout=30)


# -------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------


def firing(alerts: list[dict], name: str, instance: str) -> list[dict]:
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == name
        and a["labels"].get("instance") == instance
        and a["state"] == "firing"
    ]


def diagnosis(
    prometheus: PrometheusServer,
    services: dict[str, ServiceProcess],
    senders: dict[str, Traffic],
) -> str:
    """What to look at when the alerts did not arrive in time."""
    lines = []
    for alert in prometheus.api("alerts")["alerts"]:
        lines.append(f"alert {alert['labels']} {alert['state']} since {alert['activeAt']}")
    for metric in (
        "forecast_output_collapsed",
        "forecast_prediction_responsiveness_ratio",
        "forecast_input_drifted",
        "forecast_monitored_windows_total",
        "up",
    ):
        for sample in prometheus.api("query", query=metric)["result"]:
            lines.append(f"{metric} {sample['metric']} = {sample['value'][1]}")
    for name, sender in senders.items():
        lines.append(f"traffic {name}: {sender.requests} requests, errors {sender.errors[:3]}")
    for name, service in services.items():
        lines.append(f"--- service {name} log tail:\n{service.stderr()[-1500:]}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# The test
# -------------------------------------------------------------------------------------------


def test_prometheus_fires_collapse_and_drift_alerts_and_nothing_for_healthy_traffic(
    services: dict[str, ServiceProcess],
    prometheus: PrometheusServer,
    traffic: dict[str, Traffic],
):
    collapsed, scaled, healthy = (services[n] for n in ("collapsed", "scaled", "healthy"))
    started = time.monotonic()
    deadline = started + ALERT_TIMEOUT_S
    states: dict[tuple[str, str], str] = {}
    while True:
        alerts = prometheus.api("alerts")["alerts"]
        for alert in alerts:
            key = (alert["labels"]["alertname"], alert["labels"].get("instance", ""))
            if states.get(key) != alert["state"]:
                states[key] = alert["state"]
                log.info(
                    "%5.1fs %s %s on %s %s",
                    time.monotonic() - started,
                    key[0],
                    alert["state"],
                    key[1],
                    alert["labels"].get("feature", ""),
                )
        collapse = firing(alerts, "ForecastOutputCollapsed", collapsed.metrics_target)
        drift = firing(alerts, "ForecastInputScaleDrift", scaled.metrics_target)
        if collapse and drift:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"alerts not firing after {ALERT_TIMEOUT_S:.0f}s (collapse: {bool(collapse)}, "
                f"drift: {bool(drift)})\n{diagnosis(prometheus, services, traffic)}",
                pytrace=False,
            )
        time.sleep(POLL_INTERVAL_S)

    # The annotation templates found the instance's own series in Prometheus.
    collapsed_model = json.loads((collapsed.artifacts / "manifest.json").read_text())
    assert collapsed_model["version"] in collapse[0]["annotations"]["description"]
    assert "n/a" not in drift[0]["annotations"]["description"]
    assert {a["labels"]["feature"] for a in drift} <= set(collapsed_model["feature_names"])

    # Healthy traffic: nothing fired at any time, and the model-health alerts never even went
    # pending (ALERTS keeps every pending and firing alert as a series).
    history = f'max_over_time(ALERTS{{instance="{healthy.metrics_target}"}}[1h])'
    seen = [
        (s["metric"]["alertname"], s["metric"]["alertstate"])
        for s in prometheus.api("query", query=history)["result"]
    ]
    assert not [s for s in seen if s[1] == "firing"], f"fired for healthy traffic: {seen}"
    assert not [s for s in seen if s[0] in MODEL_HEALTH_ALERTS], f"pending on healthy: {seen}"
    assert not [
        a
        for a in prometheus.api("alerts")["alerts"]
        if a["labels"].get("instance") == healthy.metrics_target and a["state"] == "firing"
    ]

    # The fleet statistics (rate() of the monotonic counters, summed over the instances) pool a
    # healthy, a constant and a saturated instance: far from a collapsed fleet.
    fleet = {
        name: [float(s["value"][1]) for s in prometheus.api("query", query=name)["result"]]
        for name in (
            "job:forecast_prediction_standardized_values:rate10m",
            "job:forecast_prediction_standardized:mean10m",
            "job:forecast_prediction_standardized:variance10m",
        )
    }
    (outputs_per_second,) = fleet["job:forecast_prediction_standardized_values:rate10m"]
    (mean,) = fleet["job:forecast_prediction_standardized:mean10m"]
    (variance,) = fleet["job:forecast_prediction_standardized:variance10m"]
    assert outputs_per_second > 0 and np.isfinite(mean), fleet
    assert variance > 0.1, fleet
    assert not [
        a
        for a in prometheus.api("alerts")["alerts"]
        if a["labels"]["alertname"] == "ForecastFleetPredictionVarianceLow"
    ]

    # Every metric the rules use reached Prometheus from the real processes under that name.
    ingested = set(prometheus.api("label/__name__/values"))
    for group in prometheus.api("rules")["groups"]:
        for rule in group["rules"]:
            missing = metric_names(rule["query"]) - ingested
            assert not missing, f"{rule['name']}: {sorted(missing)} never scraped"

    # Only the forecast service's RPCs are counted: the health checks made while waiting for
    # each service to serve are not.
    methods = {
        sample["metric"]["method"]
        for sample in prometheus.api("query", query="forecast_requests_total")["result"]
    }
    assert "Forecast" in methods and methods <= set(FORECAST_METHODS), methods

    for name, sender in traffic.items():
        assert sender.requests > 0, name
        assert not sender.errors, f"{name}: {sender.errors[:3]}"


def test_every_dashboard_query_returns_data_from_the_real_services(
    services: dict[str, ServiceProcess],
    prometheus: PrometheusServer,
    traffic: dict[str, Traffic],
):
    """Each panel of the Grafana dashboard shows something for the running job."""
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    queries = dict(expressions(dashboard))
    deadline = time.monotonic() + 60.0
    empty = list(queries)
    while empty and time.monotonic() < deadline:
        empty = [
            where
            for where in empty
            if not prometheus.api("query", query=as_promql(queries[where]))["result"]
        ]
        time.sleep(POLL_INTERVAL_S if empty else 0)
    assert not empty, f"no data for {empty}"
