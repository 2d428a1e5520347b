"""Detector figures on a trained version: false alarms, time to detection, cost per window.

    python -m benchmarks.detectors --artifacts artifacts [--json results/detectors.json]

Uses the same replay code as tests/test_monitoring_detectors.py, on the version's own built-in
synthetic series (the held-out validation + test windows, sent as float32 like gRPC does).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from monitoring.monitor import PredictionMonitor
from monitoring.replay import Traffic, orders, replay, windows_until_flagged
from training.artifacts import ArtifactError, load_artifacts
from training.cli import command_parser
from training.faults import zero_head
from training.replay import (
    NotSyntheticError,
    drift_scenarios,
    manifest_held_out_windows,
    traffic_for,
)


def measure(artifacts_path: Path, windows_per_order: int, scratch: Path) -> dict:
    artifacts = load_artifacts(artifacts_path)
    raw = manifest_held_out_windows(artifacts.manifest)
    healthy = traffic_for(artifacts, raw)
    spec = artifacts.manifest.monitor_spec()
    if spec is None:
        raise ArtifactError(f"{artifacts.path}: no detector calibration; retrain this version")
    out: dict = {"version": artifacts.version, "held_out_windows": len(raw)}

    for name, stream in orders(len(raw), windows_per_order).items():
        r = replay(spec, healthy, stream)
        out[f"healthy_{name}"] = {
            "windows": r.windows,
            "collapse_alarms": r.collapse_alarms,
            "drift_alarms": r.drift_alarms,
            "min_responsiveness": round(r.min_responsiveness, 3),
        }
        print(
            f"healthy {name}: {r.windows} windows, {r.collapse_alarms} collapse alarms, "
            f"{r.drift_alarms} drift alarms",
            file=sys.stderr,
        )

    constant = Traffic(healthy.last_rows, np.full_like(healthy.raw_output, 0.1), healthy.forecasts)
    broken = traffic_for(load_artifacts(zero_head(artifacts.path, scratch)), raw)
    out["collapse_windows_to_flag"] = {
        "constant_output": windows_until_flagged(spec, healthy, constant, kind="collapse"),
        "zeroed_head_model": windows_until_flagged(spec, healthy, broken, kind="collapse"),
    }
    cases = drift_scenarios(artifacts)
    out["drift_windows_to_flag"] = {
        name: windows_until_flagged(spec, healthy, traffic_for(artifacts, raw, f), kind="drift")
        for name, f in cases.items()
    }
    out["psi_effective_samples_min"] = spec.calibration.settings.psi_min_samples

    n_features = len(artifacts.feature_names)
    cost = {}
    for batch in (1, 8, 32, 128):
        monitor = PredictionMonitor(spec)
        idx = np.arange(20_000) % len(raw)
        started = time.perf_counter()
        for lo in range(0, len(idx), batch):
            monitor.observe(*healthy.take(idx[lo : lo + batch]))
        monitor.flush()  # the windows still buffered count too
        seconds = time.perf_counter() - started
        cost[str(batch)] = round(seconds / len(idx) / n_features * 1e6, 3)
    out["microseconds_per_window_per_feature_by_batch"] = cost
    return out


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "python -m benchmarks.detectors",
        __doc__.splitlines()[0],
        artifacts_help="version directory or base directory (newest version)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=100_000,
        help="healthy replay length per order (sequential, shuffled)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("results/detectors.json"),
        help="where to write the JSON figures",
    )
    args = parser.parse_args(argv)
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as scratch:
            figures = measure(args.artifacts, args.windows, Path(scratch))
    except (ArtifactError, NotSyntheticError) as exc:
        print(f"python -m benchmarks.detectors: error: {exc}", file=sys.stderr)
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
