"""Detector calibration by replaying the validation split.

Training calls :func:`calibrate` with the validation split's raw model outputs and newest input
rows; the result is the manifest's ``monitoring`` section, and the service builds its detectors
from it. The replay runs the very detectors the service runs, in sequential and in shuffled
order, so thresholds reflect how autocorrelated healthy traffic really behaves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from monitoring.detectors import CollapseDetector, DriftDetector
from monitoring.reference import (
    Calibration,
    CollapseCalibration,
    DetectorSettings,
    DriftBand,
    FeatureReference,
)


def _orders(n: int, total: int, seed: int) -> dict[str, np.ndarray]:
    reps = int(np.ceil(total / n))
    sequential = np.tile(np.arange(n), reps)[:total]
    rng = np.random.default_rng(seed)
    shuffled = rng.integers(0, n, size=total)
    return {"sequential": sequential, "shuffled": shuffled}


def calibrate(
    raw_output: np.ndarray,
    last_rows: np.ndarray,
    *,
    reference: Mapping[str, FeatureReference],
    settings: DetectorSettings | None = None,
    replay_windows: int = 3000,
    chunk: int = 4,
    seed: int = 0,
) -> Calibration:
    """``raw_output`` ``[n, horizon]`` and ``last_rows`` ``[n, features]`` from the validation
    split, in time order; ``reference`` lists the features in input order."""
    settings = settings or DetectorSettings()
    n = len(raw_output)
    orders = _orders(n, replay_windows, seed)
    collapse = _calibrate_collapse(raw_output, last_rows, orders, settings, chunk)
    drift = _calibrate_drift(last_rows, reference, orders, settings, chunk)
    return Calibration(
        settings=settings,
        replay_windows=replay_windows,
        validation_windows=int(n),
        collapse=collapse,
        drift=drift,
    )


def _calibrate_collapse(
    raw_output: np.ndarray,
    last_rows: np.ndarray,
    orders: Mapping[str, np.ndarray],
    settings: DetectorSettings,
    chunk: int,
) -> CollapseCalibration:
    """Typical healthy EW variances (sequential replay: the autocorrelated case), then the
    lowest healthy responsiveness in both orders, which sets the collapse threshold."""
    horizon, n_features = raw_output.shape[1], last_rows.shape[1]
    probe = CollapseDetector(
        horizon=horizon,
        n_features=n_features,
        calibration=CollapseCalibration(pred_var=1.0, input_var=1.0, threshold=0.0),
        settings=settings,
    )
    pred_vars, input_vars = [], []
    for idx in _chunks(orders["sequential"], chunk):
        probe.update(raw_output[idx], last_rows[idx])
        if probe.pred.count >= settings.collapse_min_windows:
            pred_vars.append(probe.pred.var.mean())
            input_vars.append(probe.inputs.var.sum())
    typical = CollapseCalibration(
        pred_var=float(np.median(pred_vars)), input_var=float(np.median(input_vars)), threshold=0.0
    )
    lowest = {}
    for name, order in orders.items():
        detector = CollapseDetector(
            horizon=horizon, n_features=n_features, calibration=typical, settings=settings
        )
        seen = []
        for idx in _chunks(order, chunk):
            detector.update(raw_output[idx], last_rows[idx])
            if detector.pred.count >= settings.collapse_min_windows:
                seen.append(detector.responsiveness)
        lowest[name] = float(np.min(seen))
    threshold = min(
        settings.collapse_threshold_cap, settings.collapse_margin * min(lowest.values())
    )
    return CollapseCalibration(
        pred_var=typical.pred_var,
        input_var=typical.input_var,
        threshold=float(threshold),
        healthy_min_responsiveness=lowest,
    )


def _calibrate_drift(
    last_rows: np.ndarray,
    reference: Mapping[str, FeatureReference],
    orders: Mapping[str, np.ndarray],
    settings: DetectorSettings,
    chunk: int,
) -> dict[str, DriftBand]:
    """The healthy range of each drift statistic, per feature, over both replay orders."""
    names = list(reference)
    n = len(names)
    mean_lo, mean_hi = np.full(n, np.inf), np.full(n, -np.inf)
    std_lo, std_hi = np.full(n, np.inf), np.full(n, -np.inf)
    psi_max, oor_max = np.zeros(n), np.zeros(n)
    for order in orders.values():
        detector = DriftDetector(
            reference=reference,
            calibration={name: DriftBand.unbounded() for name in names},
            settings=settings,
        )
        for idx in _chunks(order, chunk):
            detector.update(last_rows[idx])
            if detector.stats.count < settings.drift_min_windows:
                continue
            z, s = detector.mean_zscore, detector.std_ratio
            mean_lo, mean_hi = np.minimum(mean_lo, z), np.maximum(mean_hi, z)
            std_lo, std_hi = np.minimum(std_lo, s), np.maximum(std_hi, s)
            if detector.psi_ready:
                psi_max = np.maximum(psi_max, detector.psi)
            oor_max = np.maximum(oor_max, detector.out_of_range_ratio)
    return {
        name: DriftBand(
            mean_z=(float(mean_lo[i]), float(mean_hi[i])),
            std_ratio=(float(std_lo[i]), float(std_hi[i])),
            psi=float(psi_max[i]),
            out_of_range=float(oor_max[i]),
        )
        for i, name in enumerate(names)
    }


def _chunks(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, len(order), size):
        yield order[lo : lo + size]
