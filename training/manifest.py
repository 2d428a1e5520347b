"""The manifest of a published version: a typed, frozen record with one :meth:`Manifest.load`
and one :meth:`Manifest.dump`.

``manifest.json`` stays plain JSON for people and other tools: ``version``, ``feature_names``,
``target``, ``window``, ``horizon`` and ``files`` (the sha256 of each checksummed file) sit at
the top level, next to the transform, the reference statistics and detector calibration, the
evaluation metrics, the guard's verdict and a record of the training run.

Format versions. ``format_version`` names the layout and meaning of the file. A reader knows
the formats in :data:`KNOWN_FORMATS` and refuses any other in one line naming the file and both
versions, before it trusts anything else in the file. When a change alters what a field
means, the format number goes up, and the loader migrates the older formats whose meaning it
can restate (or refuses them with a message saying why and what to do):

- Format 2 (current): the transform records its input channels (``inputs``, ``steps``,
  ``lags``, ``relative_scale``): the target's inputs relative to its last value, and seasonal
  lag channels; ``data`` and ``baselines`` record the CSV's time axis and the baselines.
  ``intervals`` (the conformal calibration of :mod:`training.intervals`) came later within
  format 2 and is optional: a version without it serves point forecasts only.
- Format 1 (before): every input a scaled level over the whole window. It is migrated on load
  to format 2 with exactly that meaning (``inputs="level"``, ``steps`` = the window, no lags).
  The sections added after its first release (``monitoring``, the raw-unit feature statistics)
  are optional, so every format-1 manifest loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from monitoring.reference import Calibration, FeatureReference, MonitorSpec
from training.baselines import Baselines
from training.config import INTERVAL_METHODS
from training.guard import SplitMetrics
from training.intervals import IntervalCalibration

log = logging.getLogger(__name__)
_T = TypeVar("_T")

FORMAT_VERSION = 2
KNOWN_FORMATS = (1, 2)

MODEL_FILE = "model.keras"
SCALER_FILE = "scaler.joblib"
MANIFEST_FILE = "manifest.json"
CHECKSUMMED = (MODEL_FILE, SCALER_FILE)


class ArtifactError(Exception):
    """An artifact cannot be used. The message is one line naming the file and the problem;
    ``reason`` classifies it: ``incomplete`` (a file or the manifest is missing: a version still
    being copied), ``checksum`` (a file differs from its sealed sha256: tampered or corrupt),
    ``incompatible`` (a format this release does not read) or ``invalid`` (anything else)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class TransformSpec:
    """The target formulation of :class:`training.transform.WindowTransform` (the scaler itself
    is ``scaler.joblib``)."""

    mode: str  # "delta" or "level"
    target_index: int  # the target's column among the features
    step_scale: tuple[float, ...]  # per horizon step, in scaled target units
    # Since format 2 (format 1's meaning as defaults: level inputs over the whole window):
    inputs: str = "level"  # "relative": the target's inputs relative to its last value
    steps: int = 0  # rows the LSTM runs over, the last of the window; 0: the whole window
    lags: tuple[int, ...] = ()  # seasonal lag channels, in periods
    relative_scale: float = 1.0  # scaled-target units of a relative input
    anchor_period: int = 0  # 0: the target is the change from the last value; p: from the
    # last value plus the change at the same phase one period earlier (and one more input
    # channel: the change over p steps, relative to the last one)

    def channels(self, n_features: int) -> int:
        """Model input channels: the features, one per lag, one for the seasonal change."""
        return n_features + len(self.lags) + (1 if self.anchor_period else 0)


@dataclass(frozen=True, kw_only=True)
class DataRecord:
    """What training made of its CSV: the time axis and the columns that are not inputs."""

    time_column: str | None  # None: no time column (rows taken in file order)
    time_kind: str | None  # "datetime" or "integer"
    step: str | None  # ISO-8601 duration ("P1D", "PT30M", "P1M") or an integer step ("1")
    start: str | None  # the first timestamp
    inserted_rows: int  # missing timestamps filled with rows of missing values
    dropped_columns: Mapping[str, str]  # column -> why it is not an input


def request_window(steps: int, lags: tuple[int, ...]) -> int:
    """Rows a window must hold for an LSTM over ``steps`` rows with seasonal lags ``lags``: the
    change over ``p`` steps at the first step reaches ``p`` rows further back (the lag channel
    of period ``p``, ``p - 1``)."""
    return steps + max(lags) if lags else steps


@dataclass(frozen=True, kw_only=True)
class Imputation:
    method: str
    train_means: tuple[float, ...]  # the training-split mean of each feature


@dataclass(frozen=True, kw_only=True)
class Reference:
    """Statistics of healthy inputs and outputs, for the drift and collapse detectors."""

    features: Mapping[str, FeatureReference]  # in input order
    validation_prediction_std: tuple[float, ...]  # raw model output, per horizon step
    validation_prediction_std_target_units: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class GuardRecord:
    """The collapse guard's verdict on this version."""

    collapsed: bool
    std_ratio_threshold: float
    reasons: tuple[str, ...]
    causes: tuple[str, ...]
    vanishing_gradient_layers: tuple[str, ...]
    published_despite_collapse: bool


@dataclass(frozen=True, kw_only=True)
class TrainingRecord:
    """How the version was trained."""

    argv: tuple[str, ...]
    units: tuple[int, ...]
    dropout: float
    l2: float
    epochs_max: int
    epochs_run: int
    best_epoch: int
    batch_size: int
    learning_rate: float
    clipnorm: float
    seed: int
    device: str
    duration_seconds: float
    windows: Mapping[str, int]  # per split
    imputed_cells: int
    seasonal_periods: tuple[int, ...] = ()  # found in the training split (format 2)
    window_choice: str = ""  # how the window was chosen, as logged (format 2)


@dataclass(frozen=True, kw_only=True)
class Environment:
    python: str
    tensorflow: str
    keras: str
    numpy: str
    scikit_learn: str


@dataclass(frozen=True, kw_only=True)
class Fault:
    """Set on deliberately broken copies (``python -m training.faults``)."""

    kind: str
    source_version: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    created_at: str
    feature_names: tuple[str, ...]
    target: str
    window: int
    horizon: int
    scaling: bool
    transform: TransformSpec
    imputation: Imputation
    reference: Reference
    monitoring: Calibration | None = None  # None: published before detectors were calibrated
    metrics: Mapping[str, SplitMetrics]  # "val" and "test"
    guard: GuardRecord
    training: TrainingRecord
    environment: Environment
    data: DataRecord | None = None  # None: the built-in synthetic series, or published before
    baselines: Baselines | None = None  # None: published before baselines were scored
    intervals: IntervalCalibration | None = None  # None: published before intervals existed
    fault: Fault | None = None
    files: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256, set by publish
    version: str = ""  # set by publish
    format_version: int = FORMAT_VERSION

    def monitor_spec(self) -> MonitorSpec | None:
        """What the prediction monitor needs, or None when the detectors were not calibrated."""
        if self.monitoring is None:
            return None
        return MonitorSpec(
            horizon=self.horizon,
            features={name: self.reference.features[name] for name in self.feature_names},
            prediction_std=self.reference.validation_prediction_std,
            calibration=self.monitoring,
        )

    def sealed(self, version: str, directory: Path) -> Manifest:
        """This manifest for ``version``, with the checksums of the files in ``directory``."""
        files = {name: sha256_file(directory / name) for name in CHECKSUMMED}
        return replace(self, version=version, files=files, format_version=FORMAT_VERSION)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body (absent optional sections are left out)."""
        body: dict[str, Any] = _ADAPTER.dump_python(self, mode="json", exclude_none=True)
        return body

    def dump(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory``; returns its path."""
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, body: object, *, source: Path | str = MANIFEST_FILE) -> Manifest:
        """Check the format version, then the fields; errors name ``source`` in one line.

        A ``monitoring`` section that cannot be used (malformed, or not calibrating exactly the
        manifest's features) is dropped with a warning: the version is served with its
        detectors off, as one published before they existed."""
        if not isinstance(body, dict):
            raise ArtifactError(f"{source}: not a JSON object")
        found = body.get("format_version")
        if type(found) is not int or found not in KNOWN_FORMATS:
            raise ArtifactError(
                f"{source}: format_version {found!r} is not one this server reads "
                f"(it reads format {', '.join(map(str, KNOWN_FORMATS))}); "
                "serve it with a matching release or retrain",
                "incompatible",
            )
        if found == 1:
            body = _from_format1(body)
        fields = {k: v for k, v in body.items() if k != "monitoring"}
        manifest = _validated(_ADAPTER, fields, source)
        if set(manifest.reference.features) != set(manifest.feature_names):
            raise ArtifactError(
                f"{source}: invalid manifest at reference.features: its features are not "
                "feature_names"
            )
        _check_intervals(manifest, source)
        if body.get("monitoring") is None:
            return manifest
        try:
            monitoring = _validated(_CALIBRATION, body["monitoring"], source)
            if set(monitoring.drift) != set(manifest.feature_names):
                raise ArtifactError(f"{source}: monitoring.drift does not list feature_names")
        except ArtifactError as exc:
            log.warning("%s; the collapse/drift detectors will be off", exc)
            return manifest
        return replace(manifest, monitoring=monitoring)

    @classmethod
    def load(cls, version_dir: Path) -> Manifest:
        """Read ``manifest.json`` of a version: format version first, then the fields, then
        every listed file's sha256 (without deserialising any of them)."""
        path = version_dir / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(f"{path}: missing manifest", "incomplete")
        try:
            body = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
        manifest = cls.from_dict(body, source=path)
        if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
            raise ArtifactError(f"{path}: no 'files' checksum table")
        _verify_files(version_dir, manifest.files)
        return manifest


_ADAPTER: TypeAdapter[Manifest] = TypeAdapter(Manifest)
_CALIBRATION: TypeAdapter[Calibration] = TypeAdapter(Calibration)


def _from_format1(body: dict[str, Any]) -> dict[str, Any]:
    """A format-1 body restated in format 2: level inputs over the whole window, no lags."""
    restated = {**body, "format_version": 2}
    if isinstance(body.get("transform"), dict):
        level: dict[str, Any] = {
            "inputs": "level",
            "steps": body.get("window"),
            "lags": [],
            "relative_scale": 1.0,
        }
        restated["transform"] = {**level, **body["transform"]}
    return restated


def _check_intervals(manifest: Manifest, source: Path | str) -> None:
    """An ``intervals`` section must hold one ascending, non-empty score list per horizon step."""
    section = manifest.intervals
    if section is None:
        return
    problem = None
    if section.method not in INTERVAL_METHODS:
        problem = f"method {section.method!r} is not one of {', '.join(INTERVAL_METHODS)}"
    elif len(section.scores) != manifest.horizon:
        problem = f"{len(section.scores)} score lists for horizon {manifest.horizon}"
    elif len({len(step) for step in section.scores}) != 1 or not section.scores[0]:
        problem = "the score lists are empty or of different lengths"
    elif not all(
        step[0] >= 0 and all(a <= b for a, b in zip(step, step[1:], strict=False))
        for step in section.scores
    ):
        problem = "scores must be non-negative and ascending"
    elif not section.scale_floor > 0:
        problem = f"scale_floor {section.scale_floor} must be > 0"
    if problem:
        raise ArtifactError(f"{source}: invalid manifest at intervals: {problem}")


def _validated(adapter: TypeAdapter[_T], body: object, source: Path | str) -> _T:
    """``body`` as the adapter's type; the first problem, named in one line, otherwise."""
    try:
        return adapter.validate_python(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(f"{source}: invalid manifest at {where}: {first['msg']}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_files(version_dir: Path, files: Mapping[str, str]) -> None:
    manifest_path = version_dir / MANIFEST_FILE
    for name in CHECKSUMMED:
        if name not in files:
            raise ArtifactError(f"{manifest_path}: no checksum listed for {name}")
    for name, expected in files.items():
        target = version_dir / name
        if Path(name).name != name:
            raise ArtifactError(f"{manifest_path}: file name {name!r} is not a plain name")
        if not target.is_file():
            raise ArtifactError(f"{target}: missing (listed in {MANIFEST_FILE})", "incomplete")
        actual = sha256_file(target)
        if actual != expected:
            raise ArtifactError(
                f"{target}: sha256 mismatch (manifest {str(expected)[:12]}…, file {actual[:12]}…)",
                "checksum",
            )
