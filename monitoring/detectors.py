"""Streaming detectors: constant-output collapse and input-scale drift.

Both look at one row per forecast window: the model's raw output (before the inverse transform,
so a persistence-relative model that stopped listening cannot hide behind the last observed
value) and the newest timestep of the scaled input window.

Collapse. ``variance_ratio`` is the recent (exponentially weighted) variance of the raw output
over its calibrated healthy level. Forecasting traffic is autocorrelated and a calm stretch of
the series legitimately lowers it, so the decision uses ``responsiveness``: the variance ratio
divided by how active the inputs were over the same span (floored, so a stale feed that sends
the same window again and again still reads as collapsed). A model whose inputs move but whose
output does not has responsiveness near 0; a calm but healthy stretch stays near 1. Thresholds
come from replaying the validation split at training time (see :mod:`monitoring.calibration`).

Drift. Per feature, in training-std units: the recent mean (z-score), the std ratio, the share
of values outside the training range, and PSI over the training deciles. A feature is drifted
when any of them leaves the band calibrated on validation replay (PSI only once its effective
sample reaches ``psi_min_samples``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from monitoring.ewstats import EWHistogram, EWSlice, EWStats, float32_tolerance, psi
from monitoring.reference import CollapseCalibration, DetectorSettings, DriftBand, FeatureReference

# Std ratios below this are "not moving at all" (float rounding, not a spread).
STILL_STD_RATIO = 1e-6


class CollapseDetector:
    """Input-adjusted variability of the raw model output, with hysteresis."""

    def __init__(
        self,
        *,
        horizon: int,
        n_features: int,
        calibration: CollapseCalibration,
        settings: DetectorSettings,
    ) -> None:
        self.settings = settings
        # Outputs and inputs share a half-life: one update for both, read apart.
        self._stats = EWStats(horizon + n_features, settings.collapse_halflife)
        self.pred = EWSlice(self._stats, slice(0, horizon))
        self.inputs = EWSlice(self._stats, slice(horizon, None))
        self.ref_pred_var = float(calibration.pred_var)
        self.ref_input_var = float(calibration.input_var)
        self.threshold_on = float(calibration.threshold)
        self.threshold_off = 2.0 * self.threshold_on
        self.collapsed = False
        self.events = 0

    def update(self, raw_output: np.ndarray, last_rows: np.ndarray) -> None:
        self._stats.update(np.hstack([raw_output, last_rows]))
        if self.pred.count < self.settings.collapse_min_windows:
            return
        r = self.responsiveness
        if not self.collapsed and r < self.threshold_on:
            self.collapsed = True
            self.events += 1
        elif self.collapsed and r > self.threshold_off:
            self.collapsed = False

    @property
    def variance_ratio(self) -> float:
        if self.pred.count == 0:
            return float("nan")
        return float(self.pred.var.mean() / max(self.ref_pred_var, 1e-12))

    @property
    def activity_ratio(self) -> float:
        if self.inputs.count == 0:
            return float("nan")
        return float(self.inputs.var.sum() / max(self.ref_input_var, 1e-12))

    @property
    def responsiveness(self) -> float:
        return self.variance_ratio / max(self.activity_ratio, self.settings.activity_floor)


class DriftDetector:
    """Per-feature input-scale drift against training statistics (scaled units)."""

    def __init__(
        self,
        *,
        reference: Mapping[str, FeatureReference],
        calibration: Mapping[str, DriftBand],
        settings: DetectorSettings,
    ) -> None:
        """``reference`` names the features in input order; ``calibration`` has a band each."""
        self.settings = settings
        self.names = list(reference)
        refs = list(reference.values())
        self.ref_mean = np.array([r.mean for r in refs])
        self.ref_std = np.maximum(np.array([r.std for r in refs]), 1e-12)
        ref_min = np.array([r.min for r in refs])
        ref_max = np.array([r.max for r in refs])
        self.ref_min = ref_min - float32_tolerance(ref_min)
        self.ref_max = ref_max + float32_tolerance(ref_max)
        self.expected = [np.asarray(r.bin_fractions) for r in refs]
        n = len(self.names)
        # Values and out-of-range indicators share a half-life: one update for both.
        self._stats = EWStats(2 * n, settings.drift_halflife)
        self.stats = EWSlice(self._stats, slice(0, n))
        self.outside = EWSlice(self._stats, slice(n, None))
        self.hist = EWHistogram([list(r.bin_edges) for r in refs], settings.psi_halflife)
        bands = [calibration[name] for name in self.names]
        m = settings
        self.mean_lo = np.array([b.mean_z[0] for b in bands]) - m.mean_margin
        self.mean_hi = np.array([b.mean_z[1] for b in bands]) + m.mean_margin
        std_lo = np.array([b.std_ratio[0] for b in bands]) / m.std_factor
        # A feature that healthy replay showed standing still (a weekend flag over a weekday
        # span) has a lowest std ratio at rounding level: it gets no lower bound on its spread,
        # or rounding noise alone would decide the flag.
        self.std_lo = np.where(std_lo < STILL_STD_RATIO, 0.0, std_lo)
        self.std_hi = np.array([b.std_ratio[1] for b in bands]) * m.std_factor
        self.psi_limit = np.array([max(m.psi_floor, m.psi_factor * b.psi) for b in bands])
        self.oor_limit = np.array([max(m.out_of_range_floor, 2.0 * b.out_of_range) for b in bands])

    def update(self, last_rows: np.ndarray) -> None:
        outside = (last_rows < self.ref_min) | (last_rows > self.ref_max)
        self._stats.update(np.hstack([last_rows, outside]))
        self.hist.update(last_rows)

    @property
    def mean_zscore(self) -> np.ndarray:
        z: np.ndarray = (self.stats.mean - self.ref_mean) / self.ref_std
        return z

    @property
    def std_ratio(self) -> np.ndarray:
        ratio: np.ndarray = np.sqrt(self.stats.var) / self.ref_std
        return ratio

    @property
    def out_of_range_ratio(self) -> np.ndarray:
        return self.outside.mean.copy()

    @property
    def psi_ready(self) -> bool:
        return self.hist.effective_samples >= self.settings.psi_min_samples

    @property
    def psi(self) -> np.ndarray:
        if not self.psi_ready:
            return np.full(len(self.names), np.nan)
        return np.array(
            [psi(a, e) for a, e in zip(self.hist.fractions, self.expected, strict=True)]
        )

    @property
    def drifted(self) -> np.ndarray:
        if self.stats.count < self.settings.drift_min_windows:
            return np.zeros(len(self.names), dtype=bool)
        z, s = self.mean_zscore, self.std_ratio
        flags = (z < self.mean_lo) | (z > self.mean_hi) | (s < self.std_lo) | (s > self.std_hi)
        flags |= self.out_of_range_ratio > self.oor_limit
        if self.psi_ready:
            flags |= self.psi > self.psi_limit
        return flags
