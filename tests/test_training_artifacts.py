"""Versioned artifacts: atomic publication, the manifest, checksums and verified loading.

Covers training/artifacts.py, plus the version the session's tiny training run published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest

from training.artifacts import (
    ArtifactError,
    list_versions,
    load_artifacts,
    publish,
    resolve_version_dir,
)
from training.data import synthetic_series
from training.manifest import Manifest
from training.predict import predict_windows
from training.prepare import prepare
from training.transform import future_targets, sliding_windows, window_ends


@pytest.fixture
def sample_manifest(format1_version) -> Manifest:
    """A complete manifest to publish placeholder files under."""
    return Manifest.load(format1_version)


@pytest.fixture
def write_dummy_files(sample_manifest):
    """A publish callback that writes placeholder model and scaler files."""

    def write(directory):
        (directory / "model.keras").write_bytes(b"model bytes")
        (directory / "scaler.joblib").write_bytes(b"scaler bytes")
        return dataclasses.replace(sample_manifest, window=4)

    return write


@pytest.fixture
def manifest(trained_version) -> dict:
    return json.loads((trained_version / "manifest.json").read_text())


@pytest.fixture
def version_copy(trained_version, tmp_path):
    """A private copy of the trained version that a test may damage."""
    return shutil.copytree(trained_version, tmp_path / trained_version.name)


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- atomic publication ---------------------------------------------------------------------


def test_publish_writes_manifest_with_checksums(tmp_path, write_dummy_files):
    path = publish(tmp_path, "20260101T000000.000000Z", write_dummy_files)

    assert path == tmp_path / "20260101T000000.000000Z"
    body = json.loads((path / "manifest.json").read_text())
    assert body["window"] == 4
    assert body["version"] == "20260101T000000.000000Z"
    assert body["files"] == {
        "model.keras": hashlib.sha256(b"model bytes").hexdigest(),
        "scaler.joblib": hashlib.sha256(b"scaler bytes").hexdigest(),
    }
    assert [p.name for p in tmp_path.iterdir()] == ["20260101T000000.000000Z"]


@pytest.mark.parametrize("crash", [OSError("disk full"), KeyboardInterrupt()])
def test_publish_crash_mid_write_leaves_nothing(tmp_path, crash):
    def write(directory):
        (directory / "model.keras").write_bytes(b"half a model")
        raise crash

    with pytest.raises(type(crash)):
        publish(tmp_path, "20260101T000000.000000Z", write)

    assert list(tmp_path.iterdir()) == []
    assert list_versions(tmp_path) == []


def test_publish_missing_scaler_leaves_nothing(tmp_path, sample_manifest):
    def write(directory):
        (directory / "model.keras").write_bytes(b"model bytes")
        return sample_manifest

    with pytest.raises(FileNotFoundError):
        publish(tmp_path, "20260101T000000.000000Z", write)

    assert list(tmp_path.iterdir()) == []


def test_publish_refuses_to_overwrite_version(tmp_path, write_dummy_files):
    first = publish(tmp_path, "20260101T000000.000000Z", write_dummy_files)
    before = (first / "manifest.json").read_text()

    with pytest.raises(ArtifactError, match="version already exists"):
        publish(tmp_path, "20260101T000000.000000Z", write_dummy_files)

    assert (first / "manifest.json").read_text() == before
    assert list(tmp_path.iterdir()) == [first]


def test_leftover_temp_dir_is_ignored(tmp_path, write_dummy_files):
    good = publish(tmp_path, "20260101T000000.000000Z", write_dummy_files)
    # What a SIGKILL between mkdtemp and rename leaves behind, for a newer version.
    leftover = tmp_path / ".tmp-20270101T000000.000000Z-x1y2z3"
    leftover.mkdir()
    (leftover / "model.keras").write_bytes(b"half a model")

    assert list_versions(tmp_path) == [good]
    assert resolve_version_dir(tmp_path) == good


def test_resolve_version_dir_picks_newest(tmp_path, write_dummy_files):
    publish(tmp_path, "20260101T000000.000000Z", write_dummy_files)
    newest = publish(tmp_path, "20260102T000000.000000Z", write_dummy_files)

    assert resolve_version_dir(tmp_path) == newest
    assert resolve_version_dir(newest) == newest


def test_resolve_version_dir_rejects_empty_base(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json and no version directories"):
        resolve_version_dir(tmp_path)


# ---- the published version ------------------------------------------------------------------


@pytest.mark.slow
def test_manifest_checksums_match_files(trained_version, manifest):
    assert manifest["files"] == {
        "model.keras": sha256_of(trained_version / "model.keras"),
        "scaler.joblib": sha256_of(trained_version / "scaler.joblib"),
    }


@pytest.mark.slow
def test_manifest_describes_model_and_data(trained_version, manifest):
    assert manifest["version"] == trained_version.name
    assert manifest["feature_names"] == ["load", "temperature", "hour_sin", "hour_cos", "weekend"]
    assert manifest["target"] == "load"
    assert manifest["window"] == 24
    assert manifest["horizon"] == 1
    assert manifest["scaling"] is True
    assert manifest["transform"]["mode"] == "delta"
    assert manifest["transform"]["target_index"] == 0
    assert manifest["guard"]["collapsed"] is False


@pytest.mark.slow
def test_manifest_reference_statistics_are_complete(manifest):
    features = manifest["reference"]["features"]

    assert list(features) == manifest["feature_names"]
    for name, stats in features.items():
        assert len(stats["deciles"]) == 9, name
        assert stats["deciles"] == sorted(stats["deciles"]), name
        assert stats["min"] <= stats["deciles"][0] <= stats["deciles"][-1] <= stats["max"], name
    # Reference statistics are of what the model sees, one row per training window. Level
    # inputs are standardised on the training split; the relative target input is the last
    # change of a window divided by relative_scale, so it centres on 0 but is not unit-scaled.
    for name in manifest["feature_names"]:
        assert features[name]["mean"] == pytest.approx(0.0, abs=0.1), name
    assert features["temperature"]["std"] == pytest.approx(1.0, abs=0.1)
    relative_scale = manifest["transform"]["relative_scale"]
    assert 0 < features["load"]["std"] < 1.0 / relative_scale
    assert features["load"]["raw_mean"] > 10_000
    prediction_std = manifest["reference"]["validation_prediction_std"]
    assert len(prediction_std) == manifest["horizon"]
    assert all(s > 0 for s in prediction_std)


@pytest.mark.slow
def test_manifest_records_validation_and_test_metrics(manifest):
    for split in ("val", "test"):
        metrics = manifest["metrics"][split]
        assert metrics["n_windows"] > 0
        assert 0 < metrics["mae"] < metrics["mean_mae"]
        assert metrics["rmse"] >= metrics["mae"]
        assert metrics["persistence_mae"] > 0
        assert metrics["std_ratio"] > manifest["guard"]["std_ratio_threshold"]


@pytest.mark.slow
def test_version_contains_reports(trained_version, manifest):
    report = json.loads((trained_version / "report.json").read_text())

    assert report["metrics"] == manifest["metrics"]
    assert set(report["gradient_norms"]) == {"lstm_0", "head"}
    assert len(report["history"]["loss"]) == manifest["training"]["epochs_run"]
    assert (trained_version / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_load_artifacts_loads_trained_version(trained_version, trained_output, manifest):
    artifacts = load_artifacts(trained_output)

    assert artifacts.path == trained_version
    assert artifacts.version == trained_version.name
    assert artifacts.feature_names == manifest["feature_names"]
    assert tuple(artifacts.model.input_shape) == (None, 24, 5)
    assert tuple(artifacts.model.output_shape) == (None, 1)
    raw_means = [manifest["reference"]["features"][f]["raw_mean"] for f in artifacts.feature_names]
    np.testing.assert_allclose(artifacts.scaler.mean_, raw_means)


@pytest.mark.slow
def test_loaded_artifacts_reproduce_test_metrics(trained_version, manifest):
    artifacts = load_artifacts(trained_version)
    transform = artifacts.transform()
    prepared = prepare(
        synthetic_series(1500), val_fraction=0.15, test_fraction=0.15, window=24, horizon=1
    )
    test_rows = prepared.splits["test"]
    ends = window_ends(len(test_rows), 24, 1)

    forecast, _ = predict_windows(artifacts.model, transform, sliding_windows(test_rows, 24, ends))

    truth = future_targets(test_rows[:, 0], 1, ends)
    mae = float(np.mean(np.abs(forecast - truth)))
    assert mae == pytest.approx(manifest["metrics"]["test"]["mae"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scaler.joblib", "model.keras"])
def test_load_artifacts_rejects_tampered_file(version_copy, name):
    with (version_copy / name).open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(ArtifactError, match=f"{name}: sha256 mismatch"):
        load_artifacts(version_copy)


@pytest.mark.slow
def test_load_artifacts_rejects_missing_model(version_copy):
    (version_copy / "model.keras").unlink()

    with pytest.raises(ArtifactError, match="model.keras: missing"):
        load_artifacts(version_copy)
