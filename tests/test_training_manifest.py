"""The typed manifest: one load (format version, fields, checksums) and one dump, and what
happens to versions already on users' disks (training/manifest.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from training.artifacts import load_artifacts
from training.manifest import FORMAT_VERSION, ArtifactError, Fault, Manifest
from training.predict import predict_windows


@pytest.fixture
def format1_copy(format1_version, tmp_path):
    """A private copy of the checked-in format-1 version that a test may edit."""
    return shutil.copytree(format1_version, tmp_path / format1_version.name)


def rewrite_manifest(version_dir, change) -> None:
    path = version_dir / "manifest.json"
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


def test_format1_manifest_is_migrated_with_its_meaning(format1_version):
    """Format 1 fed every input as a scaled level over the whole window: format 2 says so."""
    on_disk = json.loads((format1_version / "manifest.json").read_text())

    manifest = Manifest.load(format1_version)

    assert manifest.format_version == 2
    transform = manifest.transform
    assert (transform.inputs, transform.steps, transform.lags) == ("level", manifest.window, ())
    assert transform.relative_scale == 1.0
    migrated = {
        **on_disk,
        "transform": {**on_disk["transform"], **manifest.to_dict()["transform"]},
        "training": {**on_disk["training"], "seasonal_periods": [], "window_choice": ""},
        "format_version": 2,
    }
    assert manifest.to_dict() == migrated  # nothing else changes
    assert list(manifest.to_dict()) == list(on_disk)  # the same key order too


def test_format1_version_loads_and_forecasts(format1_version):
    artifacts = load_artifacts(format1_version)
    manifest = artifacts.manifest
    spec = manifest.monitor_spec()
    windows = np.ones((3, manifest.window, len(manifest.feature_names)))
    windows *= np.array([f.raw_mean for f in manifest.reference.features.values()])

    forecasts, raw = predict_windows(artifacts.model, artifacts.transform(), windows)

    assert forecasts.shape == (3, manifest.horizon)
    assert np.isfinite(forecasts).all()
    assert spec is not None
    assert spec.feature_names == list(manifest.feature_names)
    assert spec.calibration.collapse.threshold == manifest.monitoring.collapse.threshold


def test_typed_fields_are_read_as_attributes(format1_version):
    manifest = Manifest.load(format1_version)

    assert manifest.feature_names == ("load", "temperature", "hour_sin", "hour_cos", "weekend")
    assert manifest.target == "load"
    assert manifest.transform.target_index == 0
    assert len(manifest.transform.step_scale) == manifest.horizon
    assert manifest.metrics["test"].mae_vs_persistence == pytest.approx(
        manifest.metrics["test"].mae / manifest.metrics["test"].persistence_mae
    )
    assert set(manifest.files) == {"model.keras", "scaler.joblib"}


@pytest.mark.parametrize("found", [3, 0, "1", None, True, 1.0])
def test_unknown_format_version_is_refused_in_one_line(format1_copy, found):
    rewrite_manifest(format1_copy, lambda body: body.update(format_version=found))

    with pytest.raises(ArtifactError) as caught:
        Manifest.load(format1_copy)

    message = str(caught.value)
    assert "\n" not in message
    assert str(format1_copy / "manifest.json") in message
    assert f"format_version {found!r}" in message
    assert f"reads format 1, {FORMAT_VERSION})" in message


def test_manifest_without_format_version_is_refused(format1_copy):
    rewrite_manifest(format1_copy, lambda body: body.pop("format_version"))

    with pytest.raises(ArtifactError, match="format_version None is not one this server reads"):
        Manifest.load(format1_copy)


def test_format_version_is_checked_before_the_fields(format1_copy):
    """A newer format may have other fields: the version, not a field, is what gets named."""

    def newer(body):
        body["format_version"] = 99
        body.pop("transform")

    rewrite_manifest(format1_copy, newer)

    with pytest.raises(ArtifactError, match="format_version 99"):
        Manifest.load(format1_copy)


def test_invalid_field_is_named_in_one_line(format1_copy):
    rewrite_manifest(format1_copy, lambda body: body.update(window="wide"))

    with pytest.raises(ArtifactError, match=r"manifest.json: invalid manifest at window: ") as e:
        Manifest.load(format1_copy)
    assert "\n" not in str(e.value)


def test_missing_section_is_named(format1_copy):
    rewrite_manifest(format1_copy, lambda body: body.pop("transform"))

    with pytest.raises(ArtifactError, match="invalid manifest at transform: Field required"):
        Manifest.load(format1_copy)


def test_format1_sections_added_after_the_first_release_are_optional(format1_copy):
    """Versions published before detector calibration and raw-unit statistics still load;
    the server then runs without detectors (as it always did for them)."""

    def older(body):
        body.pop("monitoring")
        for reference in body["reference"]["features"].values():
            reference.pop("raw_mean")
            reference.pop("raw_std")

    rewrite_manifest(format1_copy, older)

    manifest = Manifest.load(format1_copy)

    assert manifest.monitoring is None
    assert manifest.monitor_spec() is None
    assert manifest.reference.features["load"].raw_mean is None
    assert "monitoring" not in manifest.to_dict()


def test_detectors_follow_feature_names_whatever_the_key_order(format1_copy):
    """A tool that rewrites the JSON with sorted keys must not swap features' statistics."""

    def reversed_keys(body):
        features = body["reference"]["features"]
        body["reference"]["features"] = dict(reversed(list(features.items())))

    rewrite_manifest(format1_copy, reversed_keys)

    manifest = Manifest.load(format1_copy)
    spec = manifest.monitor_spec()

    assert spec is not None
    assert spec.feature_names == list(manifest.feature_names)
    assert spec.features["load"] == manifest.reference.features["load"]


def test_reference_statistics_of_other_features_are_refused(format1_copy):
    def renamed(body):
        features = body["reference"]["features"]
        features["demand"] = features.pop("load")

    rewrite_manifest(format1_copy, renamed)

    with pytest.raises(ArtifactError, match="reference.features: its features are not"):
        Manifest.load(format1_copy)


@pytest.mark.parametrize(
    "damage",
    [
        lambda monitoring: monitoring.clear(),
        lambda monitoring: monitoring["drift"].pop("load"),
        lambda monitoring: monitoring["collapse"].pop("threshold"),
    ],
    ids=["empty", "drift band missing for a feature", "collapse threshold missing"],
)
def test_unusable_monitoring_section_turns_the_detectors_off(format1_copy, caplog, damage):
    """As before the manifest was typed: served, with the detectors off and a warning."""
    rewrite_manifest(format1_copy, lambda body: damage(body["monitoring"]))

    with caplog.at_level("WARNING", logger="training.manifest"):
        manifest = Manifest.load(format1_copy)

    assert manifest.monitoring is None
    assert manifest.monitor_spec() is None
    assert "the collapse/drift detectors will be off" in caplog.text


def test_dump_then_load_keeps_every_field(format1_copy):
    manifest = dataclasses.replace(
        Manifest.load(format1_copy), fault=Fault(kind="zero-head", source_version="v0")
    )

    manifest.dump(format1_copy)

    assert Manifest.load(format1_copy) == manifest


def test_checksums_are_verified_after_the_format(format1_copy):
    with (format1_copy / "scaler.joblib").open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(ArtifactError, match="scaler.joblib: sha256 mismatch"):
        Manifest.load(format1_copy)


@pytest.mark.slow
def test_service_refuses_an_unknown_format_at_start_up_with_exit_2(format1_copy):
    rewrite_manifest(format1_copy, lambda body: body.update(format_version=3))

    result = subprocess.run(
        [sys.executable, "-m", "service", "--artifacts", str(format1_copy)]
        + ["--address", "127.0.0.1:0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")},
    )

    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"python -m service: error: {format1_copy / 'manifest.json'}: format_version 3 is not "
        "one this server reads (it reads format 1, 2); serve it with a matching release or "
        "retrain"
    )
    assert "Traceback" not in result.stderr
