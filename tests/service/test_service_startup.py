"""``python -m service`` refuses to start on bad artifacts or an unusable address.

Each refusal is exit code 2 and one line on stderr naming the culprit, with no traceback.
"""

from __future__ import annotations

import json
import pickle
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from service_process import ServiceProcess, run_service, service_lines

from service.client import ForecastClient

pytestmark = pytest.mark.slow


class CodeRunningPickle:
    """Unpickling this touches ``marker``: proof that an unverified pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def flip_model_byte(version: Path) -> str:
    model = version / "model.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return "model.keras: sha256 mismatch"


def append_to_scaler(version: Path) -> str:
    with (version / "scaler.joblib").open("ab") as handle:
        handle.write(b"\0")
    return "scaler.joblib: sha256 mismatch"


def replace_scaler_with_code(version: Path) -> str:
    marker = version.parent / "pickle-was-loaded"
    (version / "scaler.joblib").write_bytes(pickle.dumps(CodeRunningPickle(marker)))
    return "scaler.joblib: sha256 mismatch"


def delete_model(version: Path) -> str:
    (version / "model.keras").unlink()
    return "model.keras: missing (listed in manifest.json)"


def delete_manifest(version: Path) -> str:
    (version / "manifest.json").unlink()
    return ": no manifest.json and no version directories"


def halve_manifest_window(version: Path) -> str:
    path = version / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["window"] //= 2
    path.write_text(json.dumps(manifest))
    return "model.keras: model input shape"


DAMAGE: dict[str, Callable[[Path], str]] = {
    "model byte flipped": flip_model_byte,
    "scaler modified": append_to_scaler,
    "scaler replaced by code": replace_scaler_with_code,
    "model missing": delete_model,
    "manifest missing": delete_manifest,
    "manifest window disagrees with model": halve_manifest_window,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_service_refuses_damaged_artifacts(trained_version, tmp_path, damage):
    version = tmp_path / "base" / trained_version.name
    shutil.copytree(trained_version, version)
    expected = damage(version)

    result = run_service(version)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = service_lines(result.stderr)[-1]
    assert last.startswith(f"python -m service: error: {version}"), last
    assert expected in last
    assert not (tmp_path / "base" / "pickle-was-loaded").exists()


def test_service_serves_newest_valid_version_when_newest_is_damaged(trained_version, tmp_path):
    """The server never crashes on a bad version: it serves the newest one that loads."""
    base = tmp_path / "base"
    newest = base / (trained_version.name + "-newer")
    shutil.copytree(trained_version, base / trained_version.name)
    shutil.copytree(trained_version, newest)
    flip_model_byte(newest)

    with ServiceProcess(base, tmp_path / "service.log") as process:
        process.wait_until_serving()
        with ForecastClient(process.target) as client:
            assert client.info().model_version == trained_version.name
        log = process.stderr()
    assert f"ignoring version {newest.name} (checksum)" in log
    assert "sha256 mismatch" in log


def test_service_refuses_base_dir_whose_only_version_is_damaged(trained_version, tmp_path):
    base = tmp_path / "base"
    only = base / trained_version.name
    shutil.copytree(trained_version, only)
    flip_model_byte(only)

    result = run_service(base)

    assert result.returncode == 2
    last = service_lines(result.stderr)[-1]
    assert last.startswith(f"python -m service: error: {only / 'model.keras'}: sha256"), last


def test_service_refuses_missing_artifacts_dir(tmp_path):
    result = run_service(tmp_path / "absent")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert service_lines(result.stderr)[-1] == (
        f"python -m service: error: {tmp_path / 'absent'}: no such directory"
    )


def test_service_refuses_address_in_use(trained_version):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        result = run_service(trained_version, address=address)

    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    last = service_lines(result.stderr)[-1]
    assert last.startswith("python -m service: error: "), last
    assert address in last
