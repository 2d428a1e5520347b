"""Deployment files: Kubernetes manifests, the Compose stack, the Dockerfile.

- Every Kubernetes manifest under deploy/k8s, as written and as rendered by ``kubectl kustomize``
  (the GPU base and the CPU overlay), validates against the Kubernetes 1.30 schemas that
  ``kubernetes-validate`` ships, in strict mode (unknown fields fail). The Prometheus-operator
  resources, which those schemas do not cover, get a structural check.
- The PrometheusRule is generated from deploy/prometheus/alerts.yml and must not be stale.
- deploy/compose.yaml (and its CPU override) validates against the vendored Compose
  Specification schema, and its wiring matches the Prometheus and Grafana configuration.
- The pieces that must agree do agree: probe and container ports with the server's address,
  shutdown timings with the server's grace period, environment variables with real settings,
  selectors with labels, the multi-worker TF_CONFIG with the trainer's idea of its chief.

The image itself is built and run by deploy/container-test.sh, which .ci/run calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from service.api import SERVICE_NAME
from service.config import Settings, env_name

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30"
COMPOSE_SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
OPERATOR_GROUP = "monitoring.coreos.com/v1"
SETTINGS_ENV = {env_name(name) for name in Settings.__dataclass_fields__}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _require_tool(name: str) -> str:
    """Like tests/conftest.py's require_tool (which test modules cannot import)."""
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("FORECAST_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(f"{name} not installed but FORECAST_REQUIRE_SYSTEM_TOOLS=1", pytrace=False)
    pytest.skip(f"{name} not installed")


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _kind_name(doc: dict) -> str:
    meta = doc.get("metadata", {})
    return f"{doc['kind']}/{meta.get('name') or meta.get('generateName')}"


def _check_operator_resource(doc: dict) -> None:
    """Structural check of a ServiceMonitor or PrometheusRule (no schema ships for them)."""
    assert doc["apiVersion"] == OPERATOR_GROUP, doc["apiVersion"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, spec
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert isinstance(endpoint["port"], str)
            for key in ("interval", "scrapeTimeout"):
                assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint.get(key, "1s")), endpoint
    elif doc["kind"] == "PrometheusRule":
        _check_rule_groups(spec["groups"])
        assert set(spec) == {"groups"}, spec
    else:
        pytest.fail(f"unexpected custom resource {_kind_name(doc)}")


def _check_rule_groups(groups: list) -> None:
    duration = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), names
    for group in groups:
        assert set(group) <= {"name", "rules", "interval", "limit"}, group
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert duration.fullmatch(rule.get("for", "0s")), rule
            for key in ("labels", "annotations"):
                values = rule.get(key, {})
                assert all(isinstance(v, str) for v in values.values()), (rule["alert"], key)


def _validate(doc: dict) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        _check_operator_resource(doc)
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{_kind_name(doc)}: {path}: {exc.message}", pytrace=False)


def _kustomize(directory: Path) -> list[dict]:
    kubectl = _require_tool("kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def base() -> list[dict]:
    """The resources of deploy/k8s/base as written (no kustomize transformations)."""
    return [
        doc
        for path in sorted((K8S / "base").glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _load_all(path)
    ]


@pytest.fixture(scope="module")
def deployment(base) -> dict:
    return _one(base, "Deployment", "forecast")


@pytest.fixture(scope="module")
def server(deployment) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def forecast_services(compose) -> dict[str, dict]:
    services = {n: s for n, s in compose["services"].items() if n.startswith("forecast")}
    assert services
    return services


# --------------------------------------------------------------------------------------------
# Kubernetes: schema validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_k8s_manifest_validates_against_the_kubernetes_schema(path):
    docs = _load_all(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        _validate(doc)


@pytest.mark.parametrize("overlay", ["base", "overlays/cpu"])
def test_k8s_kustomization_renders_valid_resources(overlay):
    docs = _kustomize(K8S / overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "PrometheusRule",
    } <= set(kinds), kinds
    for doc in docs:
        _validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "forecast", _kind_name(doc)


def test_k8s_validation_rejects_an_unknown_field(deployment):
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_k8s_base_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = {p.name for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_k8s_cpu_overlay_drops_the_gpu():
    gpu = _one(_kustomize(K8S / "base"), "Deployment", "forecast")["spec"]["template"]["spec"]
    cpu = _one(_kustomize(K8S / "overlays/cpu"), "Deployment", "forecast")["spec"]["template"][
        "spec"
    ]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu
    assert cpu["containers"][0]["image"].endswith("-cpu")


# --------------------------------------------------------------------------------------------
# Kubernetes: the Deployment and what must agree with it
# --------------------------------------------------------------------------------------------


def test_deployment_probes_use_native_grpc_on_the_served_port(server):
    env = _env(server)
    port = int(env["FORECAST_ADDRESS"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["grpc"] == port == 50051
    assert ports["metrics"] == int(env["FORECAST_METRICS_PORT"])
    # Start-up and liveness watch the whole server (""); readiness watches the forecast service,
    # whose status --on-collapse unready also turns NOT_SERVING.
    assert server["startupProbe"]["grpc"] == {"port": port}
    assert server["livenessProbe"]["grpc"] == {"port": port}
    assert server["readinessProbe"]["grpc"] == {"port": port, "service": SERVICE_NAME}


def test_deployment_runs_unprivileged_with_a_read_only_root(deployment, server):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    context = server["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/artifacts"].get("readOnly") is True


def test_deployment_shutdown_outlasts_the_server_grace_period(deployment, server):
    grace = float(_env(server)["FORECAST_GRACE_SECONDS"])
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    termination = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert termination >= pre_stop + grace + 5, (termination, pre_stop, grace)


def test_deployment_requests_a_gpu_and_sets_resources(server):
    resources = server["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_every_forecast_env_var_is_a_real_setting(server, forecast_services):
    named = set(_env(server))
    for service in forecast_services.values():
        named |= set(service["environment"])
    dockerfile = (REPO / "Dockerfile").read_text()
    named |= set(re.findall(r"\b(FORECAST_[A-Z_]+)=", dockerfile))
    forecast_vars = {n for n in named if n.startswith("FORECAST_")}
    assert forecast_vars and forecast_vars <= SETTINGS_ENV, forecast_vars - SETTINGS_ENV


def test_artifacts_come_from_the_claim_the_training_jobs_write(base, deployment, server):
    claim = _one(base, "PersistentVolumeClaim")["metadata"]["name"]
    assert _env(server)["FORECAST_ARTIFACTS"] == "/artifacts"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": claim, "readOnly": True} in [
        v.get("persistentVolumeClaim") for v in volumes
    ]
    for job_file in ("train.yaml", "train-multiworker.yaml"):
        job = _load_all(K8S / "jobs" / job_file)
        pod = _one(job, "Job")["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"artifacts": claim}, job_file
        assert mounts["artifacts"]["mountPath"] == "/artifacts"
        assert not mounts["artifacts"].get("readOnly"), f"{job_file} must write the claim"


def test_service_monitor_selects_the_headless_service_whose_name_is_the_alert_job(base, deployment):
    service = _one(base, "Service", "forecast")
    monitor = _one(base, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert _matches(service["spec"]["selector"], pod_labels)
    assert _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    others = [s for s in base if s["kind"] == "Service" and s is not service]
    assert not any(
        _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        for s in others
    ), "the ServiceMonitor would scrape a second Service"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    # The ServiceMonitor's job label is the Service name; the alerts select job="forecast".
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    jobs = set(re.findall(r'job="([^"]+)"', alerts))
    assert jobs <= {service["metadata"]["name"]}, jobs


def test_hpa_and_pdb_target_the_deployment(base, deployment):
    hpa = _one(base, "HorizontalPodAutoscaler")
    pdb = _one(base, "PodDisruptionBudget")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2, "a single replica cannot honour the PDB"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)


def test_admin_token_comes_from_an_optional_secret(server):
    """The ModelAdmin token (switching the serving version) is never a literal in the manifest,
    and a cluster without the Secret still starts (the admin RPCs then take the auth token)."""
    env = {e["name"]: e for e in server["env"]}
    ref = env["FORECAST_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "forecast-auth", "key": "admin-token", "optional": True}
    for name, entry in env.items():
        if name.endswith("_TOKEN"):
            assert "value" not in entry, f"{name} is a literal in the manifest"


def test_jobs_use_the_image_the_deployment_is_rendered_with():
    rendered = _one(_kustomize(K8S / "base"), "Deployment", "forecast")
    image = rendered["spec"]["template"]["spec"]["containers"][0]["image"]
    for job_file in ("train.yaml", "train-multiworker.yaml", "withdraw-version.yaml"):
        job = _one(_load_all(K8S / "jobs" / job_file), "Job")
        assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image, job_file


# --------------------------------------------------------------------------------------------
# Kubernetes: multi-worker training
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multiworker_job() -> dict:
    return _one(_load_all(K8S / "jobs" / "train-multiworker.yaml"), "Job")


def test_multiworker_job_is_indexed_and_reachable_through_the_worker_service(base, multiworker_job):
    spec = multiworker_job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(_env(container)["WORKERS"])
    service = _one(base, "Service", spec["template"]["spec"]["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"].get("publishNotReadyAddresses") is True
    assert _matches(service["spec"]["selector"], spec["template"]["metadata"]["labels"])
    assert _env(container)["WORKER_SERVICE"] == service["metadata"]["name"]
    assert int(_env(container)["WORKER_PORT"]) in {p["port"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("index", [0, 2])
def test_multiworker_job_builds_tf_config_from_the_pod_index(multiworker_job, tmp_path, index):
    """Run the Job's own shell script with a stand-in `python` that records what it gets."""
    container = multiworker_job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    fake = tmp_path / "python"
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$TF_CONFIG" > "$RECORD"\nprintf "%s\\n" "$@" >> "$RECORD"\n'
    )
    fake.chmod(0o755)
    record = tmp_path / "record.txt"
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "RECORD": str(record),
        "WORKERS": "3",
        "WORKER_SERVICE": "forecast-train-workers",
        "WORKER_PORT": "2222",
        "JOB_NAME": "forecast-train-mw-x7k2p",
        "POD_NAMESPACE": "forecast",
        "JOB_COMPLETION_INDEX": str(index),
    }
    result = subprocess.run(
        [*container["command"], container["args"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    tf_config_text, *argv = record.read_text().splitlines()
    tf_config = json.loads(tf_config_text)
    assert tf_config == {
        "cluster": {
            "worker": [
                f"forecast-train-mw-x7k2p-{i}.forecast-train-workers.forecast.svc:2222"
                for i in range(3)
            ]
        },
        "task": {"type": "worker", "index": index},
    }
    assert argv[:2] == ["-m", "training.train"]
    from training.train import build_parser

    args = build_parser().parse_args(argv[2:])
    assert args.distribute == "multiworker"
    assert str(args.output) == "/artifacts"


def test_multiworker_tf_config_makes_index_zero_the_only_chief(monkeypatch):
    from training.distribute import is_chief

    cluster = {"worker": [f"w-{i}.svc:2222" for i in range(3)]}
    chiefs = []
    for index in range(3):
        monkeypatch.setenv(
            "TF_CONFIG",
            json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        chiefs.append(is_chief())
    assert chiefs == [True, False, False]


# --------------------------------------------------------------------------------------------
# Kubernetes: withdrawing a published version
# --------------------------------------------------------------------------------------------

WITHDRAW_JOB = K8S / "jobs" / "withdraw-version.yaml"
WITHDRAW_PLACEHOLDER = "@VERSION@"


@pytest.fixture(scope="module")
def withdraw_job() -> dict:
    return _one(_load_all(WITHDRAW_JOB), "Job")


def _run_withdraw(job: dict, tmp_path: Path, version: str) -> subprocess.CompletedProcess:
    """Run the Job's own shell script against ``tmp_path`` as the artifacts claim."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    env = {"PATH": "/usr/bin:/bin", "VERSION": version, "ARTIFACTS": str(tmp_path)}
    return subprocess.run(
        [*container["command"], container["args"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_withdraw_job_writes_to_the_claim_the_deployment_serves(base, withdraw_job):
    claim = _one(base, "PersistentVolumeClaim")["metadata"]["name"]
    pod = withdraw_job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert _env(container)["ARTIFACTS"] == "/artifacts"
    assert _env(container)["VERSION"] == WITHDRAW_PLACEHOLDER
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert not mounts["/artifacts"].get("readOnly")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/artifacts"]["name"]]["persistentVolumeClaim"] == {"claimName": claim}


def test_withdraw_job_placeholder_is_filled_by_the_documented_sed():
    """The header's `sed 's/@VERSION@/<version>/'` leaves a Job naming that version only."""
    text = WITHDRAW_JOB.read_text(encoding="utf-8")
    assert f"sed 's/{WITHDRAW_PLACEHOLDER}/" in text
    filled = text.replace(WITHDRAW_PLACEHOLDER, "20260301T120000.000000Z")
    job = _one([d for d in yaml.safe_load_all(filled) if d], "Job")
    assert _env(job["spec"]["template"]["spec"]["containers"][0])["VERSION"] == (
        "20260301T120000.000000Z"
    )
    _validate(job)


def test_withdraw_job_hides_the_version_from_every_pod(withdraw_job, tmp_path):
    from training.artifacts import list_versions

    for name in ("20260101T000000.000000Z", "20260301T120000.000000Z"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    result = _run_withdraw(withdraw_job, tmp_path, "20260301T120000.000000Z")
    assert result.returncode == 0, result.stderr
    assert "withdrew 20260301T120000.000000Z" in result.stdout
    assert [p.name for p in list_versions(tmp_path)] == ["20260101T000000.000000Z"]
    hidden = tmp_path / ".withdrawn-20260301T120000.000000Z"
    assert (hidden / "manifest.json").is_file()
    # Published again and withdrawn again: the first copy is kept, the second gets a suffix.
    (tmp_path / "20260301T120000.000000Z").mkdir()
    result = _run_withdraw(withdraw_job, tmp_path, "20260301T120000.000000Z")
    assert result.returncode == 0, result.stderr
    assert hidden.is_dir()
    assert len(list(tmp_path.glob(".withdrawn-20260301T120000.000000Z-*"))) == 1
    assert [p.name for p in list_versions(tmp_path)] == ["20260101T000000.000000Z"]


@pytest.mark.parametrize(
    ("version", "code"),
    [
        (WITHDRAW_PLACEHOLDER, 2),  # created without the sed: nothing to withdraw
        ("", 2),
        (".", 2),
        ("..", 2),
        ("../etc", 2),
        ("a/b", 2),
        ("20260401T000000.000000Z", 1),  # not published
    ],
)
def test_withdraw_job_refuses_anything_but_a_published_version(
    withdraw_job, tmp_path, version, code
):
    (tmp_path / "20260101T000000.000000Z").mkdir()
    result = _run_withdraw(withdraw_job, tmp_path, version)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("withdraw: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20260101T000000.000000Z"]


# --------------------------------------------------------------------------------------------
# PrometheusRule: one source of truth
# --------------------------------------------------------------------------------------------


def test_prometheus_rule_is_generated_from_alerts_yml():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-prometheus-rule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rule = _one(_load_all(K8S / "base" / "prometheusrule.yaml"), "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_prometheus_rule_generator_reports_a_stale_copy(tmp_path):
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(
        (K8S / "base" / "prometheusrule.yaml").read_text().replace("for: 1m", "for: 9m")
    )
    script = str(REPO / "scripts" / "gen-prometheus-rule.py")
    check = [sys.executable, script, "--check", "--output", str(stale)]
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 1
    subprocess.run(
        [sys.executable, script, "--output", str(stale)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------


def _compose_schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(COMPOSE_SCHEMA), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_validates_against_the_compose_spec_schema():
    result = _compose_schema_check(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_rejects_an_unknown_service_key(compose, tmp_path):
    broken = json.loads(json.dumps(compose))
    broken["services"]["prometheus"]["volume"] = []
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = _compose_schema_check(path)
    assert result.returncode == 1, result.stdout
    assert "volume" in result.stdout


def test_compose_cpu_override_validates_against_the_compose_spec_schema():
    """The override's `!reset` tag is Compose syntax; it stands for the tagged value here."""
    import jsonschema

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))
    override = yaml.load((DEPLOY / "compose.cpu.yaml").read_text(), Loader=Loader)  # noqa: S506
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema).validate(override)
    for service in override["services"].values():
        assert service["deploy"]["resources"]["reservations"]["devices"] == []
    assert "tensorflow-cpu" in override["services"]["forecast-0"]["build"]["args"]["TF_PACKAGE"]


def test_compose_schema_is_the_recorded_vendored_copy():
    recorded = re.search(r"`([0-9a-f]{64})`", (DEPLOY / "schemas" / "README.md").read_text())
    assert recorded, "deploy/schemas/README.md records no sha256"
    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == recorded.group(1)


def test_compose_forecast_services_reserve_gpus_and_run_hardened(forecast_services):
    for name, service in forecast_services.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), name
        assert service["read_only"] is True, name
        assert any(t.startswith("/tmp") for t in service["tmpfs"]), name
        grace = float(service["environment"]["FORECAST_GRACE_SECONDS"])
        assert float(service["stop_grace_period"].rstrip("s")) > grace, name
        test = service["healthcheck"]["test"]
        assert test[-1] == "health", name
        port = service["environment"]["FORECAST_ADDRESS"].rsplit(":", 1)[1]
        assert test[test.index("--target") + 1] == f"127.0.0.1:{port}", name
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts["/artifacts"]["read_only"] is True, name


def test_compose_mounts_prometheus_alerts_and_grafana_provisioning(compose):
    prometheus = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus
    grafana = compose["services"]["grafana"]
    assert "3000:3000" in grafana["ports"]
    targets = {v.split(":")[1] for v in grafana["volumes"] if v.startswith("./")}
    assert {
        "/etc/grafana/provisioning/datasources",
        "/etc/grafana/provisioning/dashboards",
        "/var/lib/grafana/dashboards",
    } <= targets
    assert "alertmanager" in compose["services"]


def test_compose_bind_mounts_exist(compose):
    """Every relative bind-mount source is in the repository (artifacts aside: made by training)."""
    missing = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("."):
                path = DEPLOY / source
                if not path.exists():
                    missing.append(f"{name}: {source}")
    assert not missing, missing


def test_compose_services_are_the_prometheus_scrape_and_alerting_targets(
    compose, forecast_services
):
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "forecast")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {
        f"{name}:{service['environment']['FORECAST_METRICS_PORT']}"
        for name, service in forecast_services.items()
    }
    assert targets == expected
    alertmanagers = {
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    }
    assert alertmanagers == {"alertmanager:9093"}
    assert "9093:9093" in compose["services"]["alertmanager"]["ports"]


def test_compose_grafana_dashboards_mount_is_the_provisioned_path(compose):
    provider_files = (DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.y*ml")
    paths = {
        p["options"]["path"]
        for f in provider_files
        for p in yaml.safe_load(f.read_text())["providers"]
    }
    mounts = {
        v.split(":")[1]
        for v in compose["services"]["grafana"]["volumes"]
        if v.startswith("./grafana/dashboards")
    }
    assert paths and paths <= mounts
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    (mount,) = mounts
    assert home.startswith(mount + "/")
    assert (DEPLOY / "grafana" / "dashboards" / home[len(mount) + 1 :]).is_file()


def test_alertmanager_config_routes_to_defined_receivers():
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    used = {config["route"]["receiver"]} | {r["receiver"] for r in config["route"]["routes"]}
    assert used <= receivers
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    severities = {
        r["labels"]["severity"] for g in alerts["groups"] for r in g["rules"] if "alert" in r
    }
    routed = {m.split("=")[1].strip('"') for r in config["route"]["routes"] for m in r["matchers"]}
    assert severities - routed <= {"warning"}, "warnings go to the default receiver"
    amtool = _require_tool("amtool")
    check = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (keyword, arguments) per stage; continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def test_dockerfile_final_stage_is_unprivileged_with_health_ports_and_entrypoint():
    stages = _dockerfile_stages()
    assert len(stages) >= 3, "multi-stage: builder and runtime at least"
    final = dict(stages[-1])
    assert final["FROM"].startswith("${BASE_IMAGE}")
    user = [args for kw, args in stages[-1] if kw == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert re.search(r"python -m service\.client .* health\b", final["HEALTHCHECK"])
    assert set(final["EXPOSE"].split()) == {"50051", "9464"}
    assert json.loads(final["ENTRYPOINT"]) == ["python", "-m", "service"]
    assert "/tmp" in json.loads(final["VOLUME"])
    copies = [args for kw, args in stages[-1] if kw == "COPY"]
    assert all(c.startswith("--from=") for c in copies), "the runtime copies only build outputs"


def test_dockerfile_tensorflow_default_stays_in_the_project_range():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    tensorflow = next(
        Requirement(r)
        for r in pyproject["project"]["dependencies"]
        if Requirement(r).name == "tensorflow"
    )
    defaults = re.findall(r'ARG TF_PACKAGE="([^"]+)"', (REPO / "Dockerfile").read_text())
    script = (DEPLOY / "container-test.sh").read_text()
    defaults += re.findall(r'TF_PACKAGE="\$\{TF_PACKAGE:-([^}]+)\}"', script)
    compose = (DEPLOY / "compose.yaml").read_text() + (DEPLOY / "compose.cpu.yaml").read_text()
    defaults += re.findall(r"TF_PACKAGE: (?:\$\{TF_PACKAGE:-)?([^}\s]+)", compose)
    assert len(defaults) >= 4, defaults
    for package in defaults:
        requirement = Requirement(package)
        assert requirement.name in {"tensorflow", "tensorflow-cpu"}, package
        pinned = SpecifierSet(str(requirement.specifier))
        # "==2.21.*" must admit only releases the project's range admits.
        for release in ("2.21.0", "2.21.9"):
            assert release in pinned and release in tensorflow.specifier, package


def test_dockerignore_keeps_every_package_in_the_build_context():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    lines = (REPO / ".dockerignore").read_text().splitlines()
    kept = {line[1:].strip("/") for line in lines if line.startswith("!")}
    assert packages | {"pyproject.toml", "README.md"} <= kept
