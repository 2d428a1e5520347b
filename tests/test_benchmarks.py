"""``python -m benchmarks`` at a tiny size: every system, mode and figure lands in the outputs.

The runs here are smoke runs of the real load generator (real server processes, real client
processes) against the session's tiny model. Nothing is asserted about speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.load import plan
from benchmarks.run import median_round
from benchmarks.soak import rss_figures
from benchmarks.stats import FIGURE_KEYS
from benchmarks.workload import MODES
from service.threads import MODEL_THREAD

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("transport_ceiling", "naive", "service", "service_no_monitoring")
TARGET_IDS = (
    "unary_vs_transport",
    "batch256_vs_model",
    "vs_naive",
    "p50_c1",
    "monitoring_overhead",
    "memory_flat",
)
# Three small buckets keep the services' and the model ceiling's XLA warm-up short.
TINY_BATCHING = ("--batch-buckets", "1,4,16", "--max-batch-size", "16")


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def bench_dir(trained_version: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("bench")
    done = _bench(
        "run",
        "--artifacts",
        str(trained_version),
        "--output-dir",
        str(output),
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--settle",
        "0",
        "--concurrency",
        "2",
        "--unary-concurrency",
        "1,2",
        "--processes",
        "2",
        "--repeats",
        "2",
        "--overhead-pairs",
        "2",
        *TINY_BATCHING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return output


@pytest.mark.slow
def test_bench_json_has_every_system_mode_and_figure(bench_dir: Path):
    results = json.loads((bench_dir / "bench.json").read_text())
    assert set(results["systems"]) == set(SYSTEMS)
    for name in SYSTEMS:
        modes = results["systems"][name]["modes"]
        assert set(modes) == set(MODES), name
        for mode, points in modes.items():
            assert [p["concurrency"] for p in points] == ([1, 2] if mode == "unary" else [2])
            for point in points:
                for key in FIGURE_KEYS:
                    assert _finite(point[key]), (name, mode, key, point[key])
                assert point["requests"] > 0, (name, mode)
                assert point["errors"] == 0, (name, mode, point["error_codes"])
                assert _finite(point["server_cpu_cores"]) and _finite(point["server_rss_mib"])
                threads = point["server_thread_cpu_cores"]
                assert all(_finite(v) for v in threads.values()), (name, threads)
                if name.startswith("service"):  # the model thread is named for the OS
                    assert MODEL_THREAD in threads, (name, mode, threads)
                assert point["rounds"] == 2 and len(point["rounds_requests_per_s"]) == 2
                assert point["requests_per_s"] in point["rounds_requests_per_s"]
    overhead = results["monitoring_overhead"]
    assert set(overhead) == set(MODES)
    for mode, o in overhead.items():
        assert o["concurrency"] in ([1, 2] if mode == "unary" else [2])
        assert [p["first"] for p in o["pairs"]] == ["on", "off"]
        for pair in o["pairs"]:
            assert pair["errors"] == 0, (mode, pair)
            assert pair["ratio"] == pytest.approx(
                pair["on_windows_per_s"] / pair["off_windows_per_s"]
            )
            share = pair["on_monitor_cpu_share"]
            assert share is None or 0.0 < share < 1.0, (mode, pair)
        assert o["min_ratio"] <= o["median_ratio"] <= o["max_ratio"]
    # The monitoring thread is found by its OS name and its CPU is read on the "on" points.
    shares = [p["on_monitor_cpu_share"] for o in overhead.values() for p in o["pairs"]]
    assert any(share is not None for share in shares), shares
    ceiling = results["model_ceiling"]["by_batch_size"]
    assert {"1", "64", "256"} <= set(ceiling)
    for figures in ceiling.values():
        assert all(_finite(figures[key]) for key in FIGURE_KEYS)


@pytest.mark.slow
def test_bench_reports_targets_devices_and_machine(bench_dir: Path):
    results = json.loads((bench_dir / "bench.json").read_text())
    targets = {t["id"]: t for t in results["targets"]}
    assert set(targets) == set(TARGET_IDS)
    for key in TARGET_IDS:
        if key == "memory_flat":  # measured by the separate soak, not run here
            continue
        assert _finite(targets[key]["measured"]), targets[key]
        assert isinstance(targets[key]["met"], bool)
    assert results["devices"] == {
        "model_ceiling": "CPU",
        "transport_ceiling": "none",
        "naive": "CPU",
        "service": "CPU",
        "service_no_monitoring": "CPU",
    }
    assert results["machine"]["cpu_model"] and results["machine"]["logical_cores"] >= 1
    table = (bench_dir / "bench.md").read_text()
    assert "## Targets" in table and "StreamForecast" in table
    assert "## Monitoring overhead" in table
    assert "paired rounds" in targets["monitoring_overhead"]["figure"]
    assert "Monitoring thread's share of the service's CPU" in table
    assert (bench_dir / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_soak_reports_rss_after_warmup(trained_version: Path, bench_dir: Path):
    tmp_path = bench_dir  # the soak lands beside the run, so `report` can combine them
    done = _bench(
        "soak",
        "--artifacts",
        str(trained_version),
        "--output-dir",
        str(tmp_path),
        "--minutes",
        "0.05",
        "--warmup",
        "1",
        "--sample-seconds",
        "0.5",
        "--processes",
        "2",
        "--concurrency",
        "2",
        *TINY_BATCHING,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    soak = json.loads((tmp_path / "soak.json").read_text())
    assert soak["device"] == "CPU"
    for key in ("first_mib", "last_mib", "max_mib", "min_mib", "max_over_first"):
        assert _finite(soak["rss"][key]), key
    assert soak["rss"]["samples_after_warmup"] >= 2
    assert set(soak["load"]) == {"unary", "stream"}
    assert all(f["requests"] > 0 for f in soak["load"].values())
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"

    # `report` folds the soak into the run's targets without measuring anything again.
    done = _bench("report", "--output-dir", str(bench_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    targets = {t["id"]: t for t in json.loads((bench_dir / "bench.json").read_text())["targets"]}
    assert targets["memory_flat"]["measured"] == pytest.approx(soak["rss"]["max_over_first"])
    assert isinstance(targets["memory_flat"]["met"], bool)
    assert "flat within 10%" in (bench_dir / "bench.md").read_text()


def test_bench_without_trained_model_says_make_train(tmp_path: Path, capsys):
    assert main(["--artifacts", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make train" in err[0]


def test_plan_spreads_in_flight_requests_over_processes():
    assert plan("unary", 1, 4, 8) == [(1,)]
    assert plan("unary", 6, 4, 8) == [(1, 1), (1, 1), (1,), (1,)]
    # stream: at least one stream per used process, messages in flight shared between streams
    assert plan("stream", 32, 4, 8) == [(8,), (8,), (8,), (8,)]
    assert plan("stream", 2, 4, 8) == [(1,), (1,)]
    assert sum(sum(lanes) for lanes in plan("stream", 128, 3, 8)) == 128


def test_median_round_is_the_middle_throughput_and_keeps_every_round():
    rounds = [{"windows_per_s": w, "requests_per_s": w} for w in (30.0, 10.0, 20.0)]
    chosen = median_round(rounds)
    assert chosen["windows_per_s"] == 20.0 and chosen["rounds"] == 3
    assert chosen["rounds_requests_per_s"] == [30.0, 10.0, 20.0]
    assert median_round(rounds[:2])["windows_per_s"] == 10.0  # even count: the lower middle


def _point(concurrency: int, windows_per_s: float) -> dict:
    return {
        "concurrency": concurrency,
        "windows_per_s": windows_per_s,
        "requests_per_s": windows_per_s,
        "requests": 1,
        "p50_ms": 1.0,
    }


def test_monitoring_overhead_target_uses_the_worst_median_pair_over_sweep_peaks():
    from benchmarks.report import targets

    sweeps = {"unary": [_point(8, 900.0), _point(32, 1000.0)], "stream": [_point(32, 2000.0)]}
    off = {"unary": [_point(8, 1000.0), _point(32, 1100.0)], "stream": [_point(32, 2000.0)]}
    results = {
        "systems": {"service": {"modes": sweeps}, "service_no_monitoring": {"modes": off}},
        "model_ceiling": {"by_batch_size": {}},
    }
    by_peaks = {t["id"]: t for t in targets(results)}["monitoring_overhead"]
    assert by_peaks["measured"] == pytest.approx(1000.0 / 1100.0) and by_peaks["met"] is False

    results["monitoring_overhead"] = {
        "unary": {
            "concurrency": 32,
            "pairs": [{}] * 3,
            "median_ratio": 0.97,
            "min_ratio": 0.9,
            "max_ratio": 1.1,
        },
        "stream": {
            "concurrency": 32,
            "pairs": [{}] * 3,
            "median_ratio": 0.96,
            "min_ratio": 0.8,
            "max_ratio": 1.2,
        },
    }
    paired = {t["id"]: t for t in targets(results)}["monitoring_overhead"]
    assert paired["measured"] == 0.96 and paired["met"] is True
    assert "stream 0.960×" in paired["detail"] and "unary 0.909×" in paired["detail"]

    # The monitoring thread's CPU share bounds the figure too: a 6% share misses the target
    # even when the throughput pairs look fine.
    results["monitoring_overhead"]["unary"]["median_monitor_cpu_share"] = 0.06
    results["monitoring_overhead"]["stream"]["median_monitor_cpu_share"] = 0.02
    bounded = {t["id"]: t for t in targets(results)}["monitoring_overhead"]
    assert bounded["measured"] == pytest.approx(0.94) and bounded["met"] is False
    assert "unary 6.0%" in bounded["detail"] and "stream 2.0%" in bounded["detail"]


def test_rss_figures_use_only_samples_after_warmup():
    samples = [(0.0, 100.0), (5.0, 300.0), (10.0, 310.0), (15.0, 320.0)]
    figures = rss_figures(samples, warmup=5.0)
    assert figures["first_mib"] == 300.0 and figures["max_mib"] == 320.0
    assert figures["flat_within_10pct"] is True
    assert rss_figures([(10.0, 100.0), (20.0, 120.0)], warmup=10.0)["flat_within_10pct"] is False
