"""Versioned, checksummed artifacts: atomic publication and verified loading.

Layout::

    <base>/<version>/model.keras      Keras 3 model
    <base>/<version>/scaler.joblib    the fitted scikit-learn scaler (a pickle!)
    <base>/<version>/manifest.json    checksums, shapes, reference statistics, metrics
    <base>/<version>/report.json      the full training report
    <base>/<version>/report.png       forecast vs actual, loss curves, gradient norms

The manifest's types, format versions and checksums are :mod:`training.manifest`. A version is
written to a hidden temporary directory and renamed into place, so a crash never
leaves a half-written version that a server could pick up. Loaders ignore hidden directories.
Checksums are verified before anything is deserialised: ``scaler.joblib`` is a pickle and a
``.keras`` file holds code references, so neither may be opened unverified.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SCALER_FILE,
    ArtifactError,
    Manifest,
    request_window,
)

if TYPE_CHECKING:
    from training.transform import WindowTransform


__all__ = [
    "ArtifactError",
    "Artifacts",
    "list_versions",
    "load_artifacts",
    "new_version_name",
    "publish",
    "resolve_version_dir",
]


def new_version_name(now: datetime | None = None) -> str:
    """A sortable UTC timestamp, e.g. ``20261124T101530.123456Z``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def publish(base: Path, version: str, write: Callable[[Path], Manifest]) -> Path:
    """Write a version atomically.

    ``write(tmpdir)`` writes the files and returns the manifest; this function seals it with
    the version name and the checksums of the model and scaler, writes ``manifest.json`` last,
    fsyncs, and renames the directory into place. On any exception the temporary directory is
    removed.
    """
    base.mkdir(parents=True, exist_ok=True)
    final = base / version
    if final.exists():
        raise ArtifactError(f"{final}: version already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base))
    try:
        write(tmp).sealed(version, tmp).dump(tmp)
        for path in tmp.iterdir():
            _fsync(path)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
        _fsync(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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


@dataclass(frozen=True)
class Artifacts:
    """A verified, loaded version."""

    path: Path
    manifest: Manifest
    model: Any  # keras.Model
    scaler: Any  # sklearn StandardScaler

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest.feature_names)

    @property
    def window(self) -> int:
        return self.manifest.window

    @property
    def horizon(self) -> int:
        return self.manifest.horizon

    def transform(self) -> WindowTransform:
        from training.transform import WindowTransform

        m = self.manifest
        return WindowTransform.from_spec(
            self.scaler, m.transform, window=m.window, horizon=m.horizon
        )


def load_artifacts(path: str | Path) -> Artifacts:
    """Resolve, verify format and checksums, then deserialise and cross-check model, scaler and
    manifest."""
    version_dir = resolve_version_dir(path)
    manifest = Manifest.load(version_dir)

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


def _cross_check(version_dir: Path, manifest: Manifest, model: Any, scaler: Any) -> None:
    n_features = len(manifest.feature_names)
    window, horizon = manifest.window, manifest.horizon
    scaler_features = getattr(scaler, "n_features_in_", None)
    if scaler_features != n_features:
        raise ArtifactError(
            f"{version_dir / SCALER_FILE}: scaler expects {scaler_features} features, "
            f"manifest lists {n_features}"
        )
    spec = manifest.transform
    steps, channels = spec.steps or window, spec.channels(n_features)
    in_shape = tuple(model.input_shape)
    if in_shape[1:] != (steps, channels) or request_window(steps, spec.lags) != window:
        raise ArtifactError(
            f"{version_dir / MODEL_FILE}: model input shape {in_shape[1:]} disagrees with "
            f"manifest window {window} ({steps} steps) x {channels} channels"
        )
    out_shape = tuple(model.output_shape)
    if out_shape[1:] != (horizon,):
        raise ArtifactError(
            f"{version_dir / MODEL_FILE}: model output shape {out_shape[1:]} disagrees with "
            f"manifest horizon {horizon}"
        )
    if not 0 <= spec.target_index < n_features or len(spec.step_scale) != horizon:
        raise ArtifactError(f"{version_dir / MANIFEST_FILE}: transform section is inconsistent")
