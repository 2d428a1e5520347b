"""End to end: real service processes, scraped by a real Prometheus running alerts.yml.

Four ``python -m service`` processes run side by side, each on OS-chosen gRPC and metrics
ports, and one Prometheus (the Debian binary, loopback, 1 s scrape and evaluation intervals)
scrapes them with ``deploy/prometheus/alerts.yml`` loaded. Three form the job ``forecast``:

* ``collapsed``: a copy of the session's model with its output layer zeroed (constant output),
  re-sealed with correct checksums, receiving varied real windows;
* ``scaled``: the healthy model receiving the same windows multiplied by 10;
* ``healthy``: the healthy model receiving the windows as they are, under a ``series_id`` and
  with intervals at 80 and 95 %, so its forecasts are scored as the series goes on;

and the fourth, alone in the job ``forecast-shifted``:

* ``shifted``: a copy of the session's model whose every forecast is twice the validation
  persistence MAE too high (``training.faults.shift``), receiving what ``healthy`` receives.

Traffic flows from one thread per service until ``ForecastOutputCollapsed`` fires for the
collapsed instance and ``ForecastInputScaleDrift`` for the scaled one, and the realized-accuracy
alerts (``ForecastWorseThanPersistence``, ``ForecastIntervalUndercoverage``) fire for the
shifted job; then nothing may have fired (or even gone pending, for the model-health and
realized-accuracy alerts) for the healthy instance or its job. Prometheus loads ``alerts.yml``
as shipped, except that the ``for:`` of the two realized-accuracy alerts (5 and 10 minutes) is
cut to :data:`REALIZED_FOR` so that they fire within the test: their expressions, windows and
thresholds are the shipped ones, and the promtool cases hold the full ``for:`` periods.
Prometheus's ``instance`` label (the metrics address) tells the instances apart. The same
running stack then serves a second check: every query of the Grafana dashboard returns data.

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
import yaml
from service_process import ServiceProcess
from test_alerts import ALERTS_FILE, PrometheusServer, metric_names
from test_grafana_dashboard import DASHBOARD_FILE, as_promql, expressions

from service.api import REQUEST_METHODS
from service.client import ForecastClient
from training.data import chronological_split, impute, synthetic_series
from training.faults import shift, zero_head
from training.manifest import Manifest
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
LEVELS = (80.0, 95.0)
SHIFTED_JOB = "forecast-shifted"
REALIZED_FOR = "10s"


MODEL_HEALTH_ALERTS = ("ForecastOutputCollapsed", "ForecastInputScaleDrift")
REALIZED_ALERTS = ("ForecastWorseThanPersistence", "ForecastIntervalUndercoverage")


# -------------------------------------------------------------------------------------------
# Processes and traffic
# -------------------------------------------------------------------------------------------


class Traffic(threading.Thread):
    """Sends ``windows`` in time order, a few per request, round and round, until stopped;
    with a ``series_id``, under that id and asking for intervals at LEVELS."""

    def __init__(
        self,
        name: str,
        service: ServiceProcess,
        windows: np.ndarray,
        stop: threading.Event,
        series_id: str = "",
    ):
        super().__init__(name=f"traffic-{name}", daemon=True)
        self.service = service
        self.windows = windows
        self.stop_event = stop
        self.series_id = series_id
        self.requests = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with ForecastClient(self.service.target, timeout=10.0) as client:
            start = 0
            while not self.stop_event.is_set():
                rows = (start + np.arange(WINDOWS_PER_REQUEST)) % len(self.windows)
                levels = LEVELS if self.series_id else ()
                try:
                    client.forecast_response(
                        self.windows[rows], levels=levels, series_id=self.series_id
                    )
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
def shifted_version(trained_version: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forecasts off by twice the validation persistence MAE: worse than persistence."""
    by = 2.0 * Manifest.load(trained_version).metrics["val"].persistence_mae
    return shift(trained_version, tmp_path_factory.mktemp("shifted-artifacts"), by)


@pytest.fixture(scope="module")
def services(
    trained_version: Path,
    collapsed_version: Path,
    shifted_version: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, ServiceProcess]]:
    workdir = tmp_path_factory.mktemp("services")
    running: dict[str, ServiceProcess] = {}
    try:
        for name, artifacts in (
            ("collapsed", collapsed_version),
            ("scaled", trained_version),
            ("healthy", trained_version),
            ("shifted", shifted_version),
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


def realized_for_shortened(directory: Path) -> Path:
    """A copy of alerts.yml whose realized-accuracy alerts wait REALIZED_FOR, not minutes."""
    rules = yaml.safe_load(ALERTS_FILE.read_text())
    shortened = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in REALIZED_ALERTS:
                rule["for"] = REALIZED_FOR
                shortened += 1
    assert shortened == len(REALIZED_ALERTS), "alerts.yml lost a realized-accuracy alert"
    path = directory / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str,
    services: dict[str, ServiceProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrometheusServer]:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(realized_for_shortened(tmp_path_factory.mktemp("rules")))],
        "scrape_configs": [
            {
                "job_name": "forecast",
                "static_configs": [
                    {"targets": [s.metrics_target for n, s in services.items() if n != "shifted"]}
                ],
            },
            {
                "job_name": SHIFTED_JOB,
                "static_configs": [{"targets": [services["shifted"].metrics_target]}],
            },
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
        "shifted": validation_windows,
    }
    # Only these two are tracked: the job forecast's realized accuracy is the healthy one's.
    series = {"healthy": "validation", "shifted": "validation"}
    stop = threading.Event()
    senders = {
        name: Traffic(name, services[name], windows[name], stop, series.get(name, ""))
        for name in services
    }
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


def firing_for_job(alerts: list[dict], name: str, job: str) -> list[dict]:
    """Firing alerts ``name`` of a whole job (no instance label)."""
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == name and a["labels"]["job"] == job and a["state"] == "firing"
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
        "job:forecast_realized_abs_error_vs_persistence:ratio_rate30m",
        "job:forecast_realized_values:increase30m",
        "job:forecast_interval_coverage:ratio_rate1h",
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
        worse = firing_for_job(alerts, "ForecastWorseThanPersistence", SHIFTED_JOB)
        under = firing_for_job(alerts, "ForecastIntervalUndercoverage", SHIFTED_JOB)
        if collapse and drift and worse and {a["labels"]["level"] for a in under} == {"80", "95"}:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"alerts not firing after {ALERT_TIMEOUT_S:.0f}s (collapse: {bool(collapse)}, "
                f"drift: {bool(drift)}, worse than persistence: {bool(worse)}, "
                f"undercoverage: {[a['labels']['level'] for a in under]})\n"
                f"{diagnosis(prometheus, services, traffic)}",
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
    # Realized accuracy: the job forecast's scored forecasts are the healthy instance's, which
    # beat persistence and cover as promised; the shifted job's do neither.
    names = "|".join(REALIZED_ALERTS)
    realized = f'max_over_time(ALERTS{{job="forecast",alertname=~"{names}"}}[1h])'
    assert not prometheus.api("query", query=realized)["result"]
    ratios = {
        s["metric"]["job"]: float(s["value"][1])
        for s in prometheus.api(
            "query", query="job:forecast_realized_abs_error_vs_persistence:ratio_rate30m"
        )["result"]
    }
    assert ratios["forecast"] < 1.0 < ratios[SHIFTED_JOB], ratios
    coverage = {
        (s["metric"]["job"], s["metric"]["level"]): float(s["value"][1])
        for s in prometheus.api("query", query="job:forecast_interval_coverage:ratio_rate1h")[
            "result"
        ]
    }
    assert coverage[("forecast", "80")] > 0.7 and coverage[("forecast", "95")] > 0.85, coverage
    assert not [
        a
        for a in prometheus.api("alerts")["alerts"]
        if a["labels"].get("instance") == healthy.metrics_target and a["state"] == "firing"
    ]

    # The fleet statistics (rate() of the monotonic counters, summed over the instances) of the
    # job forecast pool a healthy, a constant and a saturated instance: far from a collapsed
    # fleet.
    fleet = {
        name: [
            float(s["value"][1])
            for s in prometheus.api("query", query=f'{name}{{job="forecast"}}')["result"]
        ]
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

    # Only the forecast RPCs (and the Open Inference Protocol's ModelInfer) are counted: the
    # health checks made while waiting for each service to serve are not.
    methods = {
        sample["metric"]["method"]
        for sample in prometheus.api("query", query="forecast_requests_total")["result"]
    }
    assert "Forecast" in methods and methods <= set(REQUEST_METHODS), methods

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
