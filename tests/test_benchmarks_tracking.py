"""``python -m benchmarks tracking`` and ``python -m benchmarks.degraded`` at a tiny size, on the
session's tiny model: real server and client processes, every figure in the outputs. Nothing is
asserted about speed; ``SeriesPayloads`` is checked for what the tracking bench relies on."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.degraded import crossing
from benchmarks.workload import SeriesPayloads
from service.api import pb

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_BATCHING = ("--batch-buckets", "1,4,16", "--max-batch-size", "16")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_series_payloads_continue_every_series_lane_by_lane() -> None:
    windows = np.random.default_rng(0).normal(size=(300, 6, 2)).astype(np.float32)
    for per_request in (1, 8):
        payloads = SeriesPayloads(windows, per_request)
        last: dict[str, int] = {}
        continued = 0
        for i in range(40):
            lane = payloads.lane("p0-1")  # the same lane object each time: it keeps its place
            request = pb.ForecastRequest.FromString(lane[i])
            assert len(request.windows) == per_request
            for window in request.windows:
                values = np.array(window.values, np.float32).reshape(6, 2)
                (at,) = np.flatnonzero((windows == values).all(axis=(1, 2)))
                if window.series_id in last:
                    assert at == (last[window.series_id] + 1) % len(windows)
                    continued += 1
                last[window.series_id] = int(at)
        assert continued == 40 * per_request - len(last)
        assert all(sid.startswith("p0-1-") for sid in last)


def test_crossing_finds_the_first_count_above_one_and_where_it_stays():
    curve = [(1, 0.5), (2, 1.2), (3, 0.9), (4, 1.1), (5, 1.3)]
    assert crossing(curve) == {"first_above_1": 2, "above_1_from": 4}
    assert crossing([(1, 0.5), (2, 0.9)]) == {"first_above_1": None, "above_1_from": None}


def test_tracking_bench_reports_pairs_and_memory(trained_version: Path, tmp_path: Path):
    done = _run(
        "benchmarks", "tracking", "--artifacts", str(trained_version),
        "--output-dir", str(tmp_path), "--pairs", "2", "--duration", "1", "--warmup", "0.5",
        "--settle", "0", "--processes", "2", "--unary-concurrency", "2",
        "--batch64-concurrency", "2", "--memory-series", "600", *TINY_BATCHING,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "tracking.json").read_text())
    assert set(results["throughput"]) == {"unary", "batch64"}
    for mode, figures in results["throughput"].items():
        assert len(figures["pairs"]) == 2
        assert 0 < figures["median_ratio"] < 10, mode
        assert figures["median_monitor_cpu_share"] is not None, mode
        # The "on" server really scored continuing windows; the other tracked nothing.
        assert sum(p["on_windows_continued"] for p in figures["pairs"]) > 0, mode
    rss, traced = results["memory"]["service_rss"], results["memory"]["tracemalloc"]
    assert rss["tracking_on"]["tracked_series"] >= 600
    assert rss["tracking_off"]["tracked_series"] is None
    assert math.isfinite(rss["bytes_per_series"])
    # At least the slot's arrays: a row hash per row but the first, forecasts, last value.
    assert traced["bytes_per_series"] >= traced["slot_bytes"]
    markdown = (tmp_path / "tracking.md").read_text()
    assert "Median on/off" in markdown and "bytes traced" in markdown


def test_degraded_bench_finds_a_shifted_model_worse_than_persistence(
    trained_version: Path, tmp_path: Path
):
    done = _run(
        "benchmarks.degraded", "--artifacts", str(trained_version), "--output-dir", str(tmp_path),
        "--shifts", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "degraded.json").read_text())
    healthy, shifted = results["models"].values()
    assert healthy["shift"] == 0 and healthy["final_ratio"] < 1.0
    assert healthy["above_1_from"] is None
    assert shifted["final_ratio"] > 1.0 and shifted["above_1_from"] is not None
    assert shifted["values_scored"] == results["windows_sent"] - 2  # one restart: val -> test
    assert "First above 1.0 after" in (tmp_path / "degraded.md").read_text()
