"""Versioned, checksummed artifacts: atomic publication and verified loading.

Layout::

    <base>/<version>/model.keras      Keras 3 model
    <base>/<version>/scaler.joblib    the fitted scikit-learn scaler (a pickle!)
    <base>/<version>/manifest.json    checksums, shapes, reference statistics, metrics
    <base>/<version>/report.json      the full training report
    <base>/<version>/report.png       forecast vs actual, loss curves, gradient norms

A version is written to a hidden temporary directory and renamed into place, so a crash never
leaves a half-written version that a server could pick up. Loaders ignore hidden directories.
Checksums are verified before anything is deserialised: ``scaler.joblib`` is a pickle and a
``.keras`` file holds code references, so neither may be opened unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL_FILE = "model.keras"
SCALER_FILE = "scaler.joblib"
MANIFEST_FILE = "manifest.json"
CHECKSUMMED = (MODEL_FILE, SCALER_FILE)
FORMAT_VERSION = 1


class ArtifactError(Exception):
    """An artifact cannot be used. The message is one line naming the file and the problem."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_version_name(now: datetime | None = None) -> str:
    """A sortable UTC timestamp, e.g. ``20261124T101530.123456Z``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def publish(
    base: Path, version: str, write: Callable[[Path], dict[str, Any]], *, extra_files=()
) -> Path:
    """Write a version atomically.

    ``write(tmpdir)`` writes the files and returns the manifest body; this function adds the
    checksums of the model and scaler, writes ``manifest.json`` last, fsyncs, and renames the
    directory into place. On any exception the temporary directory is removed.
    """
    base.mkdir(parents=True, exist_ok=True)
    final = base / version
    if final.exists():
        raise ArtifactError(f"{final}: version already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
    try:
        manifest = write(tmp)
        manifest["files"] = {name: sha256_file(tmp / name) for name in CHECKSUMMED}
        manifest["version"] = version
        manifest["format_version"] = FORMAT_VERSION
        _write_json(tmp / MANIFEST_FILE, manifest)
        for path in tmp.iterdir():
            _fsync(path)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
        _fsync(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_json(path: Path, body: dict) -> None:
    path.write_text(json.dumps(body, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_versions(base: Path) -> list[Path]:
    """Published version directories under ``base``, oldest first (hidden ones are skipped)."""
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def resolve_version_dir(path: str | Path) -> Path:
    """``path`` is a version directory (has a manifest) or a base directory (newest version)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such directory")
    if (path / MANIFEST_FILE).is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise ArtifactError(f"{path}: no {MANIFEST_FILE} and no version directories")
    return versions[-1]


def read_verified_manifest(version_dir: Path) -> dict[str, Any]:
    """Read ``manifest.json`` and check every listed file's sha256, without deserialising them."""
    manifest_path = version_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing manifest")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_path}: no 'files' checksum table")
    for name in CHECKSUMMED:
        if name not in files:
            raise ArtifactError(f"{manifest_path}: no checksum listed for {name}")
    for name, expected in files.items():
        target = version_dir / name
        if Path(name).name != name:
            raise ArtifactError(f"{manifest_path}: file name {name!r} is not a plain name")
        if not target.is_file():
            raise ArtifactError(f"{target}: missing (listed in {MANIFEST_FILE})")
        actual = sha256_file(target)
        if actual != expected:
            raise ArtifactError(
                f"{target}: sha256 mismatch (manifest {str(expected)[:12]}…, file {actual[:12]}…)"
            )
    for key in ("version", "feature_names", "target", "window", "horizon", "transform"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path}: missing key {key!r}")
    return manifest


@dataclass(frozen=True)
class Artifacts:
    """A verified, loaded version."""

    path: Path
    manifest: dict[str, Any]
    model: Any  # keras.Model
    scaler: Any  # sklearn StandardScaler

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["feature_names"])

    @property
    def window(self) -> int:
        return int(self.manifest["window"])

    @property
    def horizon(self) -> int:
        return int(self.manifest["horizon"])

    def transform(self):
        from training.transform import WindowTransform

        return WindowTransform.from_manifest(self.scaler, self.manifest)


def load_artifacts(path: str | Path) -> Artifacts:
    """Resolve, verify checksums, then deserialise and cross-check model, scaler and manifest."""
    version_dir = resolve_version_dir(path)
    manifest = read_verified_manifest(version_dir)

    import joblib  # deferred: only after verification

    try:
        scaler = joblib.load(version_dir / SCALER_FILE)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is an artifact problem
        raise ArtifactError(f"{version_dir / SCALER_FILE}: cannot load ({exc})") from None
    try:
        import keras

        model = keras.models.load_model(version_dir / MODEL_FILE, compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"{version_dir / MODEL_FILE}: cannot load ({exc})") from None

    _cross_check(version_dir, manifest, model, scaler)
    return Artifacts(path=version_dir, manifest=manifest, model=model, scaler=scaler)


def _cross_check(version_dir: Path, manifest: dict, model, scaler) -> None:
    n_features = len(manifest["feature_names"])
    window, horizon = int(manifest["window"]), int(manifest["horizon"])
    scaler_features = getattr(scaler, "n_features_in_", None)
    if scaler_features != n_features:
        raise ArtifactError(
            f"{version_dir / SCALER_FILE}: scaler expects {scaler_features} features, "
            f"manifest lists {n_features}"
        )
    in_shape = tuple(model.input_shape)
    if in_shape[1:] != (window, n_features):
        raise ArtifactError(
            f"{version_dir / MODEL_FILE}: model input shape {in_shape[1:]} disagrees with "
            f"manifest window {window} x {n_features} features"
        )
    out_shape = tuple(model.output_shape)
    if out_shape[1:] != (horizon,):
        raise ArtifactError(
            f"{version_dir / MODEL_FILE}: model output shape {out_shape[1:]} disagrees with "
            f"manifest horizon {horizon}"
        )
    spec = manifest["transform"]
    if (
        not 0 <= int(spec.get("target_index", -1)) < n_features
        or len(spec.get("step_scale", [])) != horizon
    ):
        raise ArtifactError(f"{version_dir / MANIFEST_FILE}: transform section is inconsistent")
