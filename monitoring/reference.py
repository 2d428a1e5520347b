"""What the detectors compare live traffic with: per-feature reference statistics of the
training split, the detector settings, and the healthy bands calibrated on validation replay.

Plain frozen dataclasses of numbers. Training builds them and stores them in the manifest;
``monitoring`` knows nothing of the manifest that carries them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from monitoring.ewstats import float32_tolerance


@dataclass(frozen=True)
class DetectorSettings:
    """Window counts are in forecast windows (one row each)."""

    collapse_halflife: float = 8.0
    collapse_min_windows: int = 32
    activity_floor: float = 0.05
    drift_halflife: float = 32.0
    drift_min_windows: int = 64
    psi_halflife: float = 256.0
    psi_min_samples: float = 500.0
    # Margins applied around what healthy validation replay showed.
    collapse_margin: float = 0.3  # threshold = margin x lowest healthy responsiveness
    collapse_threshold_cap: float = 0.1
    mean_margin: float = 1.0  # training stds beyond the healthy range of the mean z-score
    std_factor: float = 2.0  # std ratio beyond [lo / f, hi * f]
    psi_floor: float = 0.25
    psi_factor: float = 2.0
    out_of_range_floor: float = 0.5


DECILES = np.arange(10, 100, 10)


@dataclass(frozen=True, kw_only=True)
class FeatureReference:
    """Training-split statistics of one input feature in scaled (model-input) units: moments,
    range, deciles and the PSI bins derived from them; and the raw-unit mean and std (absent in
    versions published before they were recorded)."""

    mean: float
    std: float
    min: float
    max: float
    deciles: tuple[float, ...]
    bin_edges: tuple[float, ...]
    bin_fractions: tuple[float, ...]
    raw_mean: float | None = None
    raw_std: float | None = None


@dataclass(frozen=True, kw_only=True)
class CollapseCalibration:
    """Healthy EW variances of the raw output and of the inputs, and the responsiveness below
    which the output counts as collapsed (with the lowest healthy value seen per replay order)."""

    pred_var: float
    input_var: float
    threshold: float
    healthy_min_responsiveness: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DriftBand:
    """The range each drift statistic of one feature kept on healthy replay."""

    mean_z: tuple[float, float]
    std_ratio: tuple[float, float]
    psi: float
    out_of_range: float

    @classmethod
    def unbounded(cls) -> DriftBand:
        """A band nothing leaves (for a detector that only measures)."""
        return cls(
            mean_z=(-np.inf, np.inf), std_ratio=(0.0, np.inf), psi=np.inf, out_of_range=np.inf
        )


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """The manifest's ``monitoring`` section: detector settings and what healthy replay showed."""

    settings: DetectorSettings
    replay_windows: int
    validation_windows: int
    collapse: CollapseCalibration
    drift: Mapping[str, DriftBand]


def reference_bins(
    column: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Decile edges of a training column, the PSI bin edges, and the training share of each bin
    (not assumed to be 10%: repeated values make unequal bins).

    For discrete features the deciles fall exactly on data values; a float32-rounded copy of such
    a value would land in the neighbouring bin. The PSI edges therefore sit a float32 tolerance
    above the distinct deciles, so a value and its rounded copy share a bin.
    """
    deciles = np.percentile(column, DECILES)
    distinct = np.unique(deciles)
    edges = distinct + float32_tolerance(distinct)
    bins = np.searchsorted(edges, column, side="right")
    fractions = np.bincount(bins, minlength=len(edges) + 1) / len(column)
    return _floats(deciles), _floats(edges), _floats(fractions)


def feature_reference(scaled: np.ndarray, raw: np.ndarray) -> FeatureReference:
    """The reference of one feature from its training-split column, scaled and raw."""
    column = scaled.astype(np.float64)
    deciles, edges, fractions = reference_bins(column)
    return FeatureReference(
        mean=float(column.mean()),
        std=float(column.std()),
        min=float(column.min()),
        max=float(column.max()),
        deciles=deciles,
        bin_edges=edges,
        bin_fractions=fractions,
        raw_mean=float(raw.mean()),
        raw_std=float(raw.std()),
    )


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class MonitorSpec:
    """What a monitor needs from a model version, as plain numbers."""

    horizon: int
    features: Mapping[str, FeatureReference]  # in input order
    prediction_std: tuple[float, ...]  # std of the raw output on validation, per horizon step
    calibration: Calibration

    @property
    def feature_names(self) -> list[str]:
        return list(self.features)
