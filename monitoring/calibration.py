"""Reference bins, and detector calibration by replaying the validation split.

Training calls :func:`calibrate` with the validation split's raw model outputs and newest input
rows; the result goes into the manifest under ``"monitoring"`` and the service builds its
detectors from it. The replay runs the very detectors the service runs, in sequential and in
shuffled order, so thresholds reflect how autocorrelated healthy traffic really behaves.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from monitoring.detectors import CollapseDetector, DetectorSettings, DriftDetector
from monitoring.ewstats import float32_tolerance

DECILES = np.arange(10, 100, 10)


def reference_bins(column: np.ndarray) -> dict:
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
    return {
        "deciles": [float(v) for v in deciles],
        "bin_edges": [float(v) for v in edges],
        "bin_fractions": [float(v) for v in fractions],
    }


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
    feature_names: list[str],
    reference: dict,
    settings: DetectorSettings | None = None,
    replay_windows: int = 3000,
    chunk: int = 4,
    seed: int = 0,
) -> dict:
    """``raw_output`` ``[n, horizon]`` and ``last_rows`` ``[n, features]`` from the validation
    split, in time order. Returns the manifest's ``monitoring`` section."""
    settings = settings or DetectorSettings()
    n, horizon = raw_output.shape
    orders = _orders(n, replay_windows, seed)

    # 1. Typical healthy EW variances (sequential replay: the autocorrelated case).
    probe = CollapseDetector(
        horizon=horizon,
        n_features=last_rows.shape[1],
        calibration={"pred_var": 1.0, "input_var": 1.0, "threshold": 0.0},
        settings=settings,
    )
    pred_vars, input_vars = [], []
    for idx in _chunks(orders["sequential"], chunk):
        probe.update(raw_output[idx], last_rows[idx])
        if probe.pred.count >= settings.collapse_min_windows:
            pred_vars.append(probe.pred.var.mean())
            input_vars.append(probe.inputs.var.sum())
    collapse = {
        "pred_var": float(np.median(pred_vars)),
        "input_var": float(np.median(input_vars)),
        "threshold": 0.0,
    }

    # 2. Lowest healthy responsiveness, in both orders -> the collapse threshold.
    lowest = {}
    for name, order in orders.items():
        det = CollapseDetector(
            horizon=horizon, n_features=last_rows.shape[1], calibration=collapse, settings=settings
        )
        seen = []
        for idx in _chunks(order, chunk):
            det.update(raw_output[idx], last_rows[idx])
            if det.pred.count >= settings.collapse_min_windows:
                seen.append(det.responsiveness)
        lowest[name] = float(np.min(seen))
    collapse["healthy_min_responsiveness"] = lowest
    collapse["threshold"] = float(
        min(settings.collapse_threshold_cap, settings.collapse_margin * min(lowest.values()))
    )

    # 3. Healthy ranges of the drift statistics, per feature.
    wide = {
        name: {
            "mean_z": [-np.inf, np.inf],
            "std_ratio": [0.0, np.inf],
            "psi": np.inf,
            "out_of_range": np.inf,
        }
        for name in feature_names
    }
    ranges = {
        name: {
            "mean_z": [np.inf, -np.inf],
            "std_ratio": [np.inf, -np.inf],
            "psi": 0.0,
            "out_of_range": 0.0,
        }
        for name in feature_names
    }
    for order in orders.values():
        det = DriftDetector(
            feature_names=feature_names, reference=reference, calibration=wide, settings=settings
        )
        for idx in _chunks(order, chunk):
            det.update(last_rows[idx])
            if det.stats.count < settings.drift_min_windows:
                continue
            z, s, oor = det.mean_zscore, det.std_ratio, det.out_of_range_ratio
            p = det.psi if det.psi_ready else np.zeros(len(feature_names))
            for i, name in enumerate(feature_names):
                r = ranges[name]
                r["mean_z"] = [min(r["mean_z"][0], z[i]), max(r["mean_z"][1], z[i])]
                r["std_ratio"] = [min(r["std_ratio"][0], s[i]), max(r["std_ratio"][1], s[i])]
                r["psi"] = max(r["psi"], p[i])
                r["out_of_range"] = max(r["out_of_range"], oor[i])
    drift = {
        name: {
            "mean_z": [float(v) for v in r["mean_z"]],
            "std_ratio": [float(v) for v in r["std_ratio"]],
            "psi": float(r["psi"]),
            "out_of_range": float(r["out_of_range"]),
        }
        for name, r in ranges.items()
    }
    return {
        "settings": asdict(settings),
        "replay_windows": replay_windows,
        "validation_windows": int(n),
        "collapse": collapse,
        "drift": drift,
    }


def settings_from_manifest(section: dict) -> DetectorSettings:
    known = DetectorSettings.__dataclass_fields__
    return replace(DetectorSettings(), **{k: v for k, v in section.items() if k in known})


def _chunks(order: np.ndarray, size: int):
    for lo in range(0, len(order), size):
        yield order[lo : lo + size]
