"""The alert rules in deploy/prometheus: promtool's checks and unit tests, and their contract.

The rules are read back as a real Prometheus server parsed them (its ``/api/v1/rules`` API), so
these tests see exactly the expressions Prometheus evaluates. Metric names are checked against
the series that the service's own metric classes export on a fresh registry.

This module also holds the helpers the dashboard and end-to-end tests share:
:func:`exported_series`, :func:`series_family`, :func:`metric_names`, :func:`label_matchers`,
:func:`counters_read_as_gauges` and :class:`PrometheusServer`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.metrics import LifecycleMetrics, RealizedAccuracyMetrics, ServingMetrics
from monitoring.monitor import PredictionMonitor
from monitoring.realized import RealizedAccuracy
from monitoring.reference import MonitorSpec
from service.api import FORECAST_METHODS
from training.manifest import Manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DEPLOY = REPO_ROOT / "deploy" / "prometheus"
ALERTS_FILE = PROMETHEUS_DEPLOY / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_DEPLOY / "alerts_test.yml"
SAMPLE_CONFIG = PROMETHEUS_DEPLOY / "prometheus.yml"

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
SEVERITIES = {"critical", "warning"}

# -------------------------------------------------------------------------------------------
# Shared helpers
# -------------------------------------------------------------------------------------------


def exported_series(manifest: Manifest) -> dict[str, set[str]]:
    """Series names the service exports -> their label names, from the service's own metric
    classes on a fresh registry (the names Prometheus stores: ``_total``, ``_bucket``...)."""
    registry = service_registry(manifest)
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


# The interval levels whose series a server exports from start-up (a version with intervals).
PRESET_LEVELS = (80.0, 95.0)


def service_registry(manifest: Manifest) -> CollectorRegistry:
    """A fresh registry with every metric class the service registers for ``manifest``."""
    registry = CollectorRegistry()
    ServingMetrics(registry, methods=FORECAST_METHODS, model_labels=model_labels(manifest))
    registry.register(PredictionMonitor(_monitor_spec(manifest)))
    realized = RealizedAccuracy(
        window=manifest.window,
        horizon=manifest.horizon,
        n_features=len(manifest.feature_names),
        target_index=manifest.transform.target_index,
        levels=PRESET_LEVELS,
    )
    RealizedAccuracyMetrics(registry, realized.totals)
    LifecycleMetrics(registry)
    return registry


def _monitor_spec(manifest: Manifest) -> MonitorSpec:
    spec = manifest.monitor_spec()
    if spec is None:
        raise AssertionError("the session's tiny model has no detector calibration")
    return spec


def model_labels(manifest: Manifest) -> dict[str, str]:
    """``forecast_model_info`` labels as the server builds them for ``manifest``."""
    return {
        "version": manifest.version,
        "target": manifest.target,
        "window": str(manifest.window),
        "horizon": str(manifest.horizon),
        "target_mode": manifest.transform.mode,
        "device": "CPU",
    }


def series_family(name: str, exported: set[str]) -> str:
    """The metric family of an exported series. ``_bucket``/``_count``/``_sum`` come off only
    for histograms, i.e. when ``<base>_bucket`` is exported too (a gauge may end in ``_count``
    without being a histogram's count); ``_total`` comes off counters."""
    for suffix in ("_bucket", "_count", "_sum"):
        base = name.removesuffix(suffix)
        if base != name and f"{base}_bucket" in exported:
            return base
    return name.removesuffix("_total")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_WORD = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}
_MATCHERS = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_LABEL_NAME = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, label names inside
    matchers and grouping clauses, durations, numbers and Grafana ``$variables`` excluded)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in _WORD.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


_GAUGE_FUNCTION_ON_COUNTER = re.compile(r"\b(?:i?delta|deriv)\s*\(\s*([A-Za-z_:][\w:]*_total)\b")


def counters_read_as_gauges(expr: str) -> set[str]:
    """``_total`` counters an expression passes to a gauge function (``delta``, ``idelta``,
    ``deriv``). Every counter the service exports only rises, so ``rate()``/``increase()`` read
    it right, restarts included; a gauge function would read a restart as a fall."""
    return set(_GAUGE_FUNCTION_ON_COUNTER.findall(_STRING.sub('""', expr)))


def label_matchers(expr: str) -> dict[str, set[str]]:
    """``metric{label=...}`` selectors of an expression -> the label names they match on."""
    text = _STRING.sub('""', expr)
    found: dict[str, set[str]] = {}
    for metric, body in _MATCHERS.findall(text):
        found.setdefault(metric, set()).update(_LABEL_NAME.findall(body))
    return found


class PrometheusServer:
    """A real ``prometheus`` on a loopback port the OS picks, with its own data directory.

    ``config`` is written as JSON (valid YAML). The port is read from Prometheus's
    "Listening on" log line, so no port is probed for and then raced for.
    """

    LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')

    def __init__(self, binary: str, config: dict, workdir: Path, *, timeout: float = 30.0):
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.json.yml"
        config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--web.listen-address=127.0.0.1:0",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        try:
            self.url = f"http://127.0.0.1:{self._wait_for_port(timeout)}"
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.LISTENING.search(self.log())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"prometheus did not start listening:\n{self.log()[-3000:]}")

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"prometheus did not become ready:\n{self.log()[-3000:]}")

    def api(self, path: str, **params: str):
        """GET ``/api/v1/<path>`` and return its ``data`` (the call must succeed)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:  # 4xx/5xx carry Prometheus's error message
            with exc:
                raise AssertionError(f"{path} {params}: {exc.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


# -------------------------------------------------------------------------------------------
# Fixtures
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(trained_version: Path) -> Manifest:
    return Manifest.load(trained_version)


@pytest.fixture(scope="module")
def service_series(manifest: Manifest) -> dict[str, set[str]]:
    return exported_series(manifest)


@pytest.fixture(scope="module")
def loaded_rules(prometheus_binary: str, tmp_path_factory) -> list[dict]:
    """Every rule of alerts.yml as Prometheus loaded it (name, query, duration, labels...)."""
    config = {"global": {"evaluation_interval": "1m"}, "rule_files": [str(ALERTS_FILE)]}
    server = PrometheusServer(prometheus_binary, config, tmp_path_factory.mktemp("prom-rules"))
    try:
        groups = server.api("rules")["groups"]
    finally:
        server.stop()
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def alert_rules(loaded_rules: list[dict]) -> dict[str, dict]:
    """alert name -> rule."""
    return {rule["name"]: rule for rule in loaded_rules if rule["type"] == "alerting"}


@pytest.fixture(scope="module")
def recording_rules(loaded_rules: list[dict]) -> dict[str, dict]:
    """recorded series name -> rule."""
    return {rule["name"]: rule for rule in loaded_rules if rule["type"] == "recording"}


def run_promtool(promtool: str, *args: str, stdin: bytes | None = None):
    return subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, timeout=120, check=False
    )


# -------------------------------------------------------------------------------------------
# promtool
# -------------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(promtool_binary: str):
    result = run_promtool(promtool_binary, "check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests(promtool_binary: str):
    result = run_promtool(promtool_binary, "test", "rules", str(ALERTS_TEST_FILE))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_sample_prometheus_config_passes_promtool_check(promtool_binary: str):
    result = run_promtool(promtool_binary, "check", "config", str(SAMPLE_CONFIG))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_service_metrics_exposition_passes_promtool_lint(promtool_binary: str, manifest: Manifest):
    registry = service_registry(manifest)
    result = run_promtool(promtool_binary, "check", "metrics", stdin=generate_latest(registry))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_every_rule_has_promtool_unit_tests(alert_rules: dict, recording_rules: dict):
    """A rule added without promtool cases fails here (the cases themselves are promtool's):
    each alert needs a case where it fires and one where it stays quiet, each recorded series
    an expression test."""
    text = ALERTS_TEST_FILE.read_text()
    for name in alert_rules:
        cases = re.findall(rf"alertname: {name}\n\s+exp_alerts:(.*)", text)
        assert any(c.strip() == "[]" for c in cases), f"{name}: no case where it stays quiet"
        assert any(c.strip() == "" for c in cases), f"{name}: no case where it fires"
    tested = "\n".join(re.findall(r"- expr: (.*)", text))
    for name in recording_rules:
        assert name in tested, f"{name}: no promql_expr_test"


# -------------------------------------------------------------------------------------------
# Names: only what the service exports
# -------------------------------------------------------------------------------------------


def test_rules_reference_only_metrics_the_service_exports(
    loaded_rules: list[dict], recording_rules: dict, service_series: dict[str, set[str]]
):
    # `up` is Prometheus's own per target; recorded series are defined in the same file.
    known = set(service_series) | {"up"} | set(recording_rules)
    for rule in loaded_rules:
        unknown = metric_names(rule["query"]) - known
        assert not unknown, f"{rule['name']} uses {sorted(unknown)}, which nothing exports"


def test_rules_match_only_labels_those_metrics_have(
    loaded_rules: list[dict], service_series: dict[str, set[str]]
):
    for rule in loaded_rules:
        for metric, labels in label_matchers(rule["query"]).items():
            known = service_series.get(metric, set()) | TARGET_LABELS
            assert labels <= known, f"{rule['name']}: {metric} has no {sorted(labels - known)}"


def test_rules_read_counters_with_rate_not_gauge_functions(loaded_rules: list[dict]):
    for rule in loaded_rules:
        misread = counters_read_as_gauges(rule["query"])
        assert not misread, f"{rule['name']} reads counters {sorted(misread)} with delta()/deriv()"


def test_counters_read_as_gauges_finds_delta_over_counters_only():
    expr = (
        'delta(a_total[5m]) + idelta( b_total{x="1"}[1m]) + deriv(c_total[5m])'
        " + delta(gauge[5m]) + rate(d_total[5m]) + sum(delta(e_total_ratio[5m]))"
    )
    assert counters_read_as_gauges(expr) == {"a_total", "b_total", "c_total"}


def test_fleet_statistics_are_recorded_from_the_monotonic_counters(recording_rules: dict):
    recorded = {
        "job:forecast_prediction_standardized_values:rate10m",
        "job:forecast_prediction_standardized:mean10m",
        "job:forecast_prediction_standardized:variance10m",
    }
    assert recorded <= set(recording_rules)
    read = set().union(*(metric_names(recording_rules[name]["query"]) for name in recorded))
    counters = {
        f"forecast_prediction_standardized_{part}_total"
        for part in ("values", "positive_sum", "negative_sum", "squares")
    }
    assert counters <= read, sorted(counters - read)


def test_recorded_series_follow_the_level_metric_operation_convention(recording_rules: dict):
    for name in recording_rules:
        level, metric, operation = name.split(":")
        assert level in {"instance", "job"} and metric.startswith("forecast_") and operation


def test_metric_names_finds_selectors_not_functions_or_labels():
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{method="Forecast"}[5m])))'
        ' > 0.25 and on (job) sum without (code) (increase(b_total{code!~"OK|x"}[$__range]))'
        " / ignoring (x) group_left (y) c offset 5m - d ^ 2 < bool 1e-3 or absent(e == 1)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d", "e"}
    assert label_matchers(expr) == {"a_bucket": {"method"}, "b_total": {"code"}}


def test_series_family_strips_histogram_suffixes_only_from_histograms(
    service_series: dict[str, set[str]],
):
    exported = set(service_series)
    assert series_family("forecast_request_duration_seconds_bucket", exported) == (
        "forecast_request_duration_seconds"
    )
    assert series_family("forecast_batch_size_count", exported) == "forecast_batch_size"
    assert series_family("forecast_batch_size_sum", exported) == "forecast_batch_size"
    assert series_family("forecast_prediction_standardized_values_total", exported) == (
        "forecast_prediction_standardized_values"
    )
    assert series_family("forecast_input_standardized_negative_sum_total", exported) == (
        "forecast_input_standardized_negative_sum"
    )
    assert series_family("forecast_queue_depth", exported) == "forecast_queue_depth"
    # A gauge ending in _count is no histogram's count.
    assert series_family("jobs_count", {"jobs_count"}) == "jobs_count"


# -------------------------------------------------------------------------------------------
# The contract of the issue: alert names, durations, severities, annotations
# -------------------------------------------------------------------------------------------


def test_required_alerts_exist_with_their_durations_and_severities(alert_rules: dict):
    expected = {
        "ForecastOutputCollapsed": ("critical", 60),
        "ForecastInputScaleDrift": ("warning", 120),
        "ForecastHighErrorRate": ("critical", 300),
        "ForecastHighLatency": ("warning", 600),
        "ForecastFleetPredictionVarianceLow": ("critical", 300),
        "ForecastServiceDown": ("critical", 120),
        "ForecastWorseThanPersistence": ("warning", 300),
        "ForecastIntervalUndercoverage": ("warning", 600),
        # One-off events: they fire on the evaluation after the counter moved.
        "ForecastCandidateRejected": ("warning", 0),
        "ForecastModelVersionIgnored": ("warning", 0),
    }
    for name, (severity, duration) in expected.items():
        assert name in alert_rules, f"missing alert {name}"
        assert alert_rules[name]["labels"]["severity"] == severity, name
        assert alert_rules[name]["duration"] == duration, name
    assert "forecast_output_collapsed == 1" in alert_rules["ForecastOutputCollapsed"]["query"]
    assert "forecast_input_drifted == 1" in alert_rules["ForecastInputScaleDrift"]["query"]


def test_realized_accuracy_alerts_pool_the_job_over_their_windows_with_a_guard(
    alert_rules: dict, recording_rules: dict
):
    """Worse than persistence: the job's summed abs-error rate over persistence's, over 30
    minutes, above 1.0, with at least 500 scored values. Undercoverage: per level, coverage over
    an hour more than 10 points below level / 100, with at least 500 scored values."""
    ratio = recording_rules["job:forecast_realized_abs_error_vs_persistence:ratio_rate30m"]
    assert "sum by (job) (rate(forecast_realized_abs_error_total[30m]))" in ratio["query"]
    assert (
        "sum by (job) (rate(forecast_realized_persistence_abs_error_total[30m]))"
        in (ratio["query"])
    )
    values = recording_rules["job:forecast_realized_values:increase30m"]["query"]
    assert values == "sum by (job) (increase(forecast_realized_values_total[30m]))"
    worse = alert_rules["ForecastWorseThanPersistence"]["query"]
    assert "ratio_rate30m > 1" in worse and "increase30m >= 500" in worse
    coverage = recording_rules["job:forecast_interval_coverage:ratio_rate1h"]["query"]
    assert "sum by (job, level) (rate(forecast_interval_covered_total[1h]))" in coverage
    assert "sum by (job, level) (rate(forecast_interval_scored_total[1h]))" in coverage
    under = alert_rules["ForecastIntervalUndercoverage"]["query"]
    assert "forecast_interval_nominal_coverage_ratio) - 0.1" in under
    assert "job:forecast_interval_scored:increase1h >= 500" in under


def test_lifecycle_alerts_count_recent_events_over_the_job(alert_rules: dict):
    """A rejected candidate and an ignored version are counted once per instance: the alerts sum
    the increase over the job (one alert for the fleet) in a window that lets them resolve by
    themselves. A copy in progress (ignored as incomplete until it is complete) is no alarm."""
    rejected = alert_rules["ForecastCandidateRejected"]["query"]
    assert rejected == (
        'sum by (job) (increase(forecast_model_promotions_total{result="rejected"}[15m])) > 0'
    )
    ignored = alert_rules["ForecastModelVersionIgnored"]["query"]
    assert ignored == (
        "sum by (job) "
        '(increase(forecast_model_versions_ignored_total{reason!="incomplete"}[15m])) > 0'
    )


def test_lifecycle_runbooks_say_how_to_see_why_and_how_to_roll_back(alert_rules: dict):
    rejected = alert_rules["ForecastCandidateRejected"]["annotations"]["runbook"]
    for phrase in (
        "collapsed",
        "worse_than_serving",
        "Serving continues on the previous version",
        "python -m service.client versions",
        '"candidate <version> rejected',
        "forecast_model_rejections_total",
        "publish the result under a new name",
        "python -m service.client use <version>",
    ):
        assert phrase in rejected, f"ForecastCandidateRejected runbook lacks {phrase!r}"
    ignored = alert_rules["ForecastModelVersionIgnored"]["annotations"]["runbook"]
    for phrase in ("checksum", "incompatible", "invalid", "python -m service.client versions"):
        assert phrase in ignored, f"ForecastModelVersionIgnored runbook lacks {phrase!r}"


def test_runbooks_roll_back_a_model_version_without_a_restart(alert_rules: dict):
    """Where a bad version is the remedy's target, the runbook names the admin switch (every
    replica switches on its own, at once) rather than a redeployment."""
    for name in (
        "ForecastOutputCollapsed",
        "ForecastFleetPredictionVarianceLow",
        "ForecastWorseThanPersistence",
        "ForecastHighErrorRate",
        "ForecastHighLatency",
    ):
        runbook = alert_rules[name]["annotations"]["runbook"]
        assert "python -m service.client use" in runbook, f"{name}: no rollback command"


def test_every_alert_has_severity_summary_description_and_runbook(alert_rules: dict):
    for name, rule in alert_rules.items():
        assert rule["labels"].get("severity") in SEVERITIES, name
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"].get(key, "").strip()) > 20, f"{name}: no {key}"
        runbook = rule["annotations"]["runbook"]
        assert "Likely causes" in runbook and "First checks" in runbook, name


def test_runbooks_name_the_known_causes(alert_rules: dict):
    causes = {
        "ForecastOutputCollapsed": (
            "scaler mismatch",
            "unscaled inputs",
            "stale feed",
            "bad model version",
        ),
        "ForecastInputScaleDrift": (
            "unit change",
            "upstream scaling",
            "already standardized",
            "stuck sensor",
        ),
    }
    for name, phrases in causes.items():
        runbook = alert_rules[name]["annotations"]["runbook"]
        for phrase in phrases:
            assert phrase in runbook, f"{name} runbook does not name {phrase!r}"


def test_rule_labels_stay_bounded(loaded_rules: list[dict]):
    """Aggregations keep only target labels (plus `feature`, and `level`, which the service caps
    at 16 values): no per-request label leaks in."""
    allowed = TARGET_LABELS | {"feature", "le", "level"}
    for rule in loaded_rules:
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["query"]):
            labels = {label.strip() for label in clause.split(",") if label.strip()}
            assert labels <= allowed, f"{rule['name']} groups by {sorted(labels - allowed)}"
