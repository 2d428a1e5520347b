"""Replay recorded traffic through a fresh :class:`PredictionMonitor`: false alarms and time to
detection. Used by the detector tests and by ``python -m benchmarks.detectors``.

Traffic is given as per-window arrays (numbers only): the newest scaled input row ``[n, F]``,
the raw model output ``[n, H]`` and the forecasts in target units ``[n, H]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitoring.monitor import PredictionMonitor
from monitoring.reference import MonitorSpec


@dataclass(frozen=True)
class Traffic:
    last_rows: np.ndarray
    raw_output: np.ndarray
    forecasts: np.ndarray

    def __len__(self) -> int:
        return len(self.last_rows)

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.last_rows[idx], self.raw_output[idx], self.forecasts[idx]


@dataclass(frozen=True)
class ReplayResult:
    windows: int
    collapse_alarms: int
    drift_alarms: int
    drift_features: tuple[str, ...]
    min_responsiveness: float
    max_psi_seen: float
    psi_effective_samples: float


def orders(n: int, total: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Sequential (cycled) and shuffled (with replacement) index streams of length ``total``."""
    return {
        "sequential": np.tile(np.arange(n), total // n + 1)[:total],
        "shuffled": np.random.default_rng(seed).integers(0, n, size=total),
    }


def replay(spec: MonitorSpec, traffic: Traffic, order: np.ndarray, batch: int = 8) -> ReplayResult:
    """Count alarm onsets (transitions into collapsed / drifted) over the whole stream."""
    monitor = PredictionMonitor(spec)
    collapse_alarms = drift_alarms = 0
    was_collapsed = False
    was_drifted = np.zeros(len(monitor.feature_names), dtype=bool)
    features: set[str] = set()
    lowest = np.inf
    max_psi = 0.0
    for lo in range(0, len(order), batch):
        monitor.observe(*traffic.take(order[lo : lo + batch]))
        monitor.flush()  # read the state a scrape would read after this batch
        collapsed = monitor.collapse.collapsed
        collapse_alarms += int(collapsed and not was_collapsed)
        was_collapsed = collapsed
        drifted = monitor.drift.drifted
        onsets = drifted & ~was_drifted
        drift_alarms += int(onsets.sum())
        features.update(n for n, f in zip(monitor.feature_names, onsets, strict=True) if f)
        was_drifted = drifted
        if monitor.collapse.pred.count >= monitor.collapse.settings.collapse_min_windows:
            lowest = min(lowest, monitor.collapse.responsiveness)
        if monitor.drift.psi_ready:
            max_psi = max(max_psi, float(np.nanmax(monitor.drift.psi)))
    return ReplayResult(
        windows=len(order),
        collapse_alarms=collapse_alarms,
        drift_alarms=drift_alarms,
        drift_features=tuple(sorted(features)),
        min_responsiveness=float(lowest),
        max_psi_seen=max_psi,
        psi_effective_samples=monitor.drift.hist.effective_samples,
    )


def windows_until_flagged(
    spec: MonitorSpec,
    healthy: Traffic,
    faulty: Traffic,
    *,
    kind: str,
    warm_up: int = 1000,
    batch: int = 8,
    limit: int = 4096,
) -> int | None:
    """Run ``warm_up`` healthy windows, then the faulty stream (same time positions, in order);
    return how many faulty windows it took until ``kind`` ("collapse" or "drift") was flagged,
    or None if it never was within ``limit``. Raises if healthy warm-up already alarmed."""
    if kind not in ("collapse", "drift"):
        raise ValueError(kind)
    monitor = PredictionMonitor(spec)
    n = len(healthy)
    for lo in range(0, warm_up, batch):
        monitor.observe(*healthy.take(np.arange(lo, min(lo + batch, warm_up)) % n))
        monitor.flush()  # the same decision points however fast this machine runs
    if monitor.collapse.collapsed or monitor.drift.drifted.any():
        raise AssertionError("healthy warm-up traffic already raised an alarm")
    for k in range(0, limit, batch):
        monitor.observe(*faulty.take(np.arange(warm_up + k, warm_up + k + batch) % n))
        monitor.flush()  # what a scrape after these windows would read
        if kind == "collapse" and monitor.collapse.collapsed:
            return k + batch
        if kind == "drift" and monitor.drift.drifted.any():
            return k + batch
    return None
