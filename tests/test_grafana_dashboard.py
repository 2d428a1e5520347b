"""The Grafana dashboard and its provisioning files under deploy/grafana.

Every PromQL expression on the dashboard (panel targets and variable queries) may name only
series the service really exports, as its own metric classes build them on a fresh registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_alerts import (
    REPO_ROOT,
    TARGET_LABELS,
    PrometheusServer,
    counters_read_as_gauges,
    exported_series,
    label_matchers,
    metric_names,
    series_family,
)

from training.manifest import Manifest

GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "forecast-service.json"
DATASOURCES_FILE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARDS_PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}

# The monotonic counters behind the fleet mean and variance (rate() of each, summed over
# instances: mean = (positive_sum - negative_sum) / values, variance = squares / values - mean^2).
SUFFICIENT_STATISTICS = ("values", "positive_sum", "negative_sum", "squares")

# Panel title -> metric families its expressions must read.
REQUIRED_PANELS = {
    "Request rate by code": {"forecast_requests"},
    "Latency percentiles (Forecast, ModelInfer)": {"forecast_request_duration_seconds"},
    "Batch size": {"forecast_batch_size"},
    "Queue depth": {"forecast_queue_depth"},
    "Variance ratio and responsiveness": {
        "forecast_prediction_variance_ratio",
        "forecast_prediction_responsiveness_ratio",
        "forecast_collapse_threshold_ratio",
    },
    "Output collapsed": {"forecast_output_collapsed"},
    "Input mean z-score": {"forecast_input_mean_zscore"},
    "Input std ratio": {"forecast_input_std_ratio"},
    "Input PSI": {"forecast_input_psi"},
    "Input drifted": {"forecast_input_drifted"},
    "Fleet prediction variance": {
        f"forecast_prediction_standardized_{part}" for part in SUFFICIENT_STATISTICS
    },
    "Fleet input mean and std (training-std units)": {
        f"forecast_input_standardized_{part}" for part in SUFFICIENT_STATISTICS
    },
    "Realized MAE ratio vs persistence": {
        "forecast_realized_abs_error",
        "forecast_realized_persistence_abs_error",
    },
    "Interval coverage per level": {
        "forecast_interval_covered",
        "forecast_interval_scored",
        "forecast_interval_nominal_coverage_ratio",
    },
}

_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*$")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


@pytest.fixture(scope="module")
def service_series(trained_version: Path) -> dict[str, set[str]]:
    return exported_series(Manifest.load(trained_version))


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows; rows themselves excluded."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def expressions(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query)
        assert match and match.group(1), f"variable {variable['name']}: unexpected {query!r}"
        yield f"variable {variable['name']}", match.group(1)


def as_promql(expr: str, *, job: str = "forecast", instance: str = ".*") -> str:
    """The query Grafana sends for ``expr`` with these variable values."""
    values = {"job": job, "instance": instance, "__rate_interval": "1m", "__range": "1h"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def test_dashboard_is_a_grafana_dashboard(dashboard: dict):
    assert dashboard["uid"] == "forecast-service"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    ids += [p["id"] for row in dashboard["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["targets"], f"{panel['title']} has no query"
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_panels_fit_the_grid_without_overlapping(dashboard: dict):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_the_datasource_variable(dashboard: dict):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE_REF, variable["name"]


def test_every_expression_names_only_metrics_the_service_exports(
    dashboard: dict, service_series: dict[str, set[str]]
):
    seen = 0
    for where, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{where} selects no metric: {expr}"
        unknown = names - set(service_series)
        assert not unknown, f"{where} uses {sorted(unknown)}, which the service does not export"
        seen += 1
    assert seen >= len(REQUIRED_PANELS)


def test_every_expression_reads_counters_with_rate_not_gauge_functions(dashboard: dict):
    for where, expr in expressions(dashboard):
        misread = counters_read_as_gauges(expr)
        assert not misread, f"{where} reads counters {sorted(misread)} with delta()/deriv()"


def test_every_expression_matches_only_labels_those_metrics_have(
    dashboard: dict, service_series: dict[str, set[str]]
):
    for where, expr in expressions(dashboard):
        for metric, labels in label_matchers(expr).items():
            known = service_series[metric] | TARGET_LABELS
            assert labels <= known, f"{where}: {metric} has no label(s) {sorted(labels - known)}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            metric, label = _matched(_LABEL_VALUES, query).groups()
            (name,) = metric_names(metric)
            assert label in service_series[name] | TARGET_LABELS, query


def test_required_panels_show_their_metrics(dashboard: dict, service_series: dict[str, set[str]]):
    by_title = {panel["title"]: panel for panel in panels(dashboard)}
    exported = set(service_series)
    for title, families in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title!r}"
        shown = {
            series_family(name, exported)
            for target in by_title[title]["targets"]
            for name in metric_names(target["expr"])
        }
        assert families <= shown, f"{title!r} does not show {sorted(families - shown)}"


def test_latency_panel_shows_p50_p90_p99(dashboard: dict):
    (panel,) = [
        p for p in panels(dashboard) if p["title"] == "Latency percentiles (Forecast, ModelInfer)"
    ]
    quantiles = {
        _matched(re.compile(r"\s*histogram_quantile\(([\d.]+),"), target["expr"]).group(1)
        for target in panel["targets"]
    }
    assert quantiles == {"0.5", "0.9", "0.99"}


def test_drift_panels_are_per_feature(dashboard: dict):
    for panel in panels(dashboard):
        if panel["title"].startswith("Input ") and "fleet" not in panel["title"].lower():
            for target in panel["targets"]:
                assert "{{feature}}" in target["legendFormat"], panel["title"]


def test_coverage_panel_is_per_level(dashboard: dict):
    (panel,) = [p for p in panels(dashboard) if p["title"] == "Interval coverage per level"]
    for target in panel["targets"]:
        assert "by (level)" in target["expr"] and "{{level}}" in target["legendFormat"]


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus():
    provider = DASHBOARDS_PROVIDER_FILE.read_text()
    assert re.search(r"^apiVersion: 1$", provider, re.MULTILINE)
    assert re.search(r"^\s+type: file$", provider, re.MULTILINE)
    assert re.search(rf"^\s+path: {re.escape(DASHBOARDS_MOUNT)}$", provider, re.MULTILINE)
    datasources = DATASOURCES_FILE.read_text()
    assert re.search(r"^apiVersion: 1$", datasources, re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasources, re.MULTILINE)
    assert DASHBOARDS_MOUNT in (GRAFANA / "README.md").read_text()


def test_every_expression_is_valid_promql_to_a_real_prometheus(
    dashboard: dict, prometheus_binary: str, tmp_path: Path
):
    server = PrometheusServer(prometheus_binary, {"global": {}}, tmp_path)
    try:
        for where, expr in expressions(dashboard):
            try:
                server.api("query", query=as_promql(expr))
            except AssertionError as exc:  # HTTP 400: Prometheus cannot parse it
                pytest.fail(f"{where}: {exc}", pytrace=False)
    finally:
        server.stop()


def _matched(pattern: re.Pattern[str], text: str) -> re.Match[str]:
    match = pattern.match(text)
    if match is None:
        raise AssertionError(f"{text!r} does not match {pattern.pattern!r}")
    return match
