"""Tampered or half-written artifacts never start a server; a killed training run never
leaves anything a server would pick up."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from service_process import REPO_ROOT, ServiceProcess, clean_env, run_service, service_lines

from service.api import pb, pb_grpc
from training.artifacts import list_versions, resolve_version_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def other_version(tmp_path_factory, tiny_training_args) -> Path:
    """A second version trained on a longer series: its scaler differs from the session's."""
    from training.train import main

    base = tmp_path_factory.mktemp("other")
    argv = [
        *tiny_training_args,
        "--synthetic-steps",
        "1800",
        "--epochs",
        "2",
        "--allow-collapsed",
        "--output",
        str(base),
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    (version,) = list_versions(base)
    return version


def _copy(trained_version: Path, tmp_path: Path) -> Path:
    version = tmp_path / "base" / trained_version.name
    shutil.copytree(trained_version, version)
    return version


def _assert_refused(version: Path, expected: str) -> None:
    result = run_service(version)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = service_lines(result.stderr)
    assert lines[-1].startswith(f"python -m service: error: {version}"), lines[-1]
    assert expected in lines[-1]


@pytest.mark.parametrize("name", ["model.keras", "scaler.joblib"])
def test_truncated_file_is_refused(trained_version, tmp_path, name):
    version = _copy(trained_version, tmp_path)
    data = (version / name).read_bytes()
    (version / name).write_bytes(data[: len(data) // 2])

    _assert_refused(version, f"{name}: sha256 mismatch")


def test_scaler_swapped_in_from_another_version_is_refused(
    trained_version, other_version, tmp_path
):
    version = _copy(trained_version, tmp_path)
    assert (other_version / "scaler.joblib").read_bytes() != (
        version / "scaler.joblib"
    ).read_bytes()
    shutil.copy2(other_version / "scaler.joblib", version / "scaler.joblib")

    _assert_refused(version, "scaler.joblib: sha256 mismatch")


def test_manifest_naming_a_missing_file_is_refused(trained_version, tmp_path):
    version = _copy(trained_version, tmp_path)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"]["calibration.bin"] = "0" * 64
    (version / "manifest.json").write_text(json.dumps(manifest))

    _assert_refused(version, "calibration.bin: missing (listed in manifest.json)")


def test_version_directory_without_manifest_is_refused(trained_version, tmp_path):
    base = tmp_path / "base"
    version = _copy(trained_version, tmp_path)
    (version / "manifest.json").unlink()

    result = run_service(base)  # the newest version of the base dir has no manifest

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert service_lines(result.stderr)[-1].endswith(f"{version}/manifest.json: missing manifest")


def test_training_killed_mid_write_leaves_the_previous_version_served(
    trained_version, tmp_path, tiny_training_args
):
    base = tmp_path / "base"
    good = _copy(trained_version, tmp_path)
    training = subprocess.Popen(
        [sys.executable, "-m", "training.train", *tiny_training_args, "--output", str(base)],
        cwd=REPO_ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(base.glob(".tmp-*")):
        assert training.poll() is None, "training finished before it was caught mid-write"
        time.sleep(0.002)
    training.send_signal(signal.SIGKILL)
    training.wait(30)

    assert list(base.glob(".tmp-*")), "the kill did not land mid-write"
    assert list_versions(base) == [good]
    assert resolve_version_dir(base) == good
    with ServiceProcess(base, tmp_path / "service.log") as service:
        service.wait_until_serving()
        with grpc.insecure_channel(service.target) as channel:
            info = pb_grpc.ForecastServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert info.model_version == good.name
