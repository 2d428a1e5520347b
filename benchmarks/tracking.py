"""What realized-accuracy tracking costs: throughput with it on against off, and memory per
tracked series (``python -m benchmarks tracking``).

Two service processes run side by side, identical but for ``--realized-tracking`` (monitoring
on in both). The client processes send every window with a ``series_id``, each series its
held-out windows in time order, so every window continues its series' last one: matching and
scoring run for every window, the tracking's full cost (see
:class:`benchmarks.workload.SeriesPayloads`). Both servers get the same bytes.

Throughput: per mode, ``pairs`` back-to-back pairs of points (tracking on, then off; the next
pair off first), as the main bench measures monitoring. The figure is the median of the pairs'
ratios; the monitoring thread's share of the "on" server's CPU is read on each pair (tracking
runs on that thread).

Memory: after the pairs, one window each of ``memory_series`` new series (in requests of 256
windows) goes to both servers, and each one's RSS growth is read from ``/proc``; the "off"
server's growth (allocator noise, nothing tracked) is subtracted. The same number of series is
also tracked in this process under ``tracemalloc``, which counts exactly what the tracker holds.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from benchmarks.load import ClientPool
from benchmarks.machine import machine_info
from benchmarks.run import RunConfig, describe_pair, measure_pair, summarize_pairs
from benchmarks.servers import ServerProcess, System, server_env, service_args
from benchmarks.workload import MODES, held_out, model_shape
from monitoring.realized import RealizedAccuracy
from service.api import pb, pb_grpc
from training.manifest import Manifest

SCHEMA = "forecast-tracking/1"
MEMORY_BATCH = 256


@dataclass(frozen=True)
class TrackingConfig:
    artifacts: Path
    output_dir: Path
    device: str
    modes: tuple[str, ...]
    concurrency: dict[str, int]  # per mode
    pairs: int
    duration: float
    warmup: float
    settle: float
    processes: int
    stream_depth: int
    timeout: float
    memory_series: int
    server_cpus: tuple[int, ...] | None
    client_cpus: tuple[int, ...] | None
    service_flags: tuple[str, ...] = ()
    control: bool = False  # both servers with tracking off: the noise of the pairs alone


def tracking_systems(
    artifacts: Path, service_flags: tuple[str, ...], *, control: bool = False
) -> list[System]:
    """The "on" and "off" services; with ``control``, two "off" ones under the same names."""
    service = service_args(artifacts, "--monitoring", "true", *service_flags)
    return [
        System(f"tracking_{state}", f"service, realized tracking {state}",
               (*service, "--realized-tracking", "true" if state == "on" and not control
                else "false"))
        for state in ("on", "off")
    ]  # fmt: skip


def run_tracking(config: TrackingConfig, *, progress=print) -> dict:
    version_dir, shape, manifest = model_shape(config.artifacts)
    windows = held_out(manifest)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    logs = config.output_dir / "logs"
    logs.mkdir(exist_ok=True)
    point_config = RunConfig(
        artifacts=config.artifacts,
        output_dir=config.output_dir,
        device=config.device,
        duration=config.duration,
        warmup=config.warmup,
        processes=config.processes,
        sweeps={},
        stream_depth=config.stream_depth,
        timeout=config.timeout,
        settle=config.settle,
        naive_workers=1,
        server_cpus=config.server_cpus,
        client_cpus=config.client_cpus,
    )
    started = time.time()
    results: dict = {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine_info(),
        "config": {
            "artifacts": str(version_dir),
            "modes": {m: MODES[m].label for m in config.modes},
            "concurrency": dict(config.concurrency),
            "pairs": config.pairs,
            "duration": config.duration,
            "warmup": config.warmup,
            "processes": config.processes,
            "memory_series": config.memory_series,
            "service_flags": list(config.service_flags),
            "control": config.control,
        },
        "model": {
            "version": shape.version,
            "window": shape.window,
            "horizon": shape.horizon,
            "features": list(shape.feature_names),
            "held_out_windows": len(windows),
        },
        "throughput": {},
    }
    with contextlib.ExitStack() as stack:
        on, off = (
            stack.enter_context(
                ServerProcess(
                    system,
                    logs / f"{system.name}.log",
                    env=server_env(config.device),
                    cpus=config.server_cpus,
                )
            )
            for system in tracking_systems(
                version_dir, config.service_flags, control=config.control
            )
        )
        progress(f"starting the two services and {config.processes} client processes ...")
        pool = stack.enter_context(
            ClientPool(
                config.processes, windows, shape.horizon, cpus=config.client_cpus, series=True
            )
        )
        for server in (on, off):
            server.wait_ready()
        for mode in config.modes:
            results["throughput"][mode] = paired_throughput(
                pool, on, off, mode, config.concurrency[mode], config.pairs, point_config,
                progress=progress,
            )  # fmt: skip
        if not config.control:
            results["memory"] = {
                "service_rss": service_memory(on, off, windows, config, progress=progress),
                "tracemalloc": tracemalloc_per_series(manifest, config.memory_series),
            }
    results["wall_seconds"] = round(time.time() - started, 1)
    return results


def paired_throughput(
    pool: ClientPool,
    on: ServerProcess,
    off: ServerProcess,
    mode: str,
    concurrency: int,
    pairs: int,
    config: RunConfig,
    *,
    progress=print,
) -> dict:
    """``pairs`` back-to-back on/off points, the order alternating; every pair's ratio kept."""
    records = []
    for i in range(pairs):
        before = _realized(on)
        record = measure_pair(pool, on, off, mode, concurrency, config, on_first=i % 2 == 0)
        after = _realized(on)
        # What the "on" server scored meanwhile (warm-up and drain included).
        record["on_windows_continued"] = after["continued"] - before["continued"]
        record["on_windows_other"] = (after["new"] + after["restarted"]) - (
            before["new"] + before["restarted"]
        )
        record["on_values_scored"] = after["values"] - before["values"]
        records.append(record)
        progress(
            f"  tracking on/off {mode:<8} c={concurrency:<4} pair {i + 1}: "
            + describe_pair(record)
            + f"  (scored {record['on_windows_continued']:,.0f} continuing windows)"
        )
    return summarize_pairs(concurrency, records)


def _realized(server: ServerProcess) -> dict[str, float]:
    samples = server.scrape()
    return {
        "values": samples.get("forecast_realized_values_total", 0.0),
        **{
            outcome: samples.get(f'forecast_realized_windows_total{{outcome="{outcome}"}}', 0.0)
            for outcome in ("continued", "restarted", "new")
        },
    }


def service_memory(
    on: ServerProcess, off: ServerProcess, windows: np.ndarray, config: TrackingConfig, *, progress
) -> dict:
    """RSS growth of each server while ``memory_series`` new series send one window each."""
    flat = np.asarray(windows, np.float32).reshape(len(windows), -1).tolist()
    growth: dict[str, dict[str, float | None]] = {}
    grown: dict[str, float] = {}
    for server in (on, off):
        server.wait_idle()  # what the load points left to free is freed
        before = server.rss_bytes()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            for lo in range(0, config.memory_series, MEMORY_BATCH):
                ids = range(lo, min(lo + MEMORY_BATCH, config.memory_series))
                stub.Forecast(
                    pb.ForecastRequest(
                        windows=[
                            pb.Window(values=flat[i % len(flat)], series_id=f"memory-{i}")
                            for i in ids
                        ]
                    ),
                    timeout=config.timeout,
                )
        tracked = _tracked(server)  # the scrape also scores what waits
        server.wait_idle()
        after = server.rss_bytes()
        grown[server.system.name] = after - before
        growth[server.system.name] = {
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "tracked_series": tracked,
        }
        progress(
            f"  memory: {server.system.name} RSS {before / 2**20:,.1f} -> {after / 2**20:,.1f} "
            f"MiB after {config.memory_series:,} new series ({tracked} tracked)"
        )
    return {
        **growth,
        "series": config.memory_series,
        "bytes_per_series": (grown[on.system.name] - grown[off.system.name]) / config.memory_series,
    }


def _tracked(server: ServerProcess) -> float | None:
    return server.scrape().get("forecast_realized_tracked_series")


def tracemalloc_per_series(manifest: Manifest, series: int) -> dict:
    """Bytes the tracker holds per series, traced in this process, for the version's shape."""
    window, horizon = manifest.window, manifest.horizon
    n_features = len(manifest.feature_names)
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(MEMORY_BATCH, window, n_features)).astype(np.float32)
    forecasts = np.zeros((MEMORY_BATCH, horizon))
    tracemalloc.start()
    try:

        def tracker(max_series: int) -> RealizedAccuracy:
            return RealizedAccuracy(
                window=window,
                horizon=horizon,
                n_features=n_features,
                target_index=manifest.transform.target_index,
                max_series=max_series,
            )

        # What a tracker holds whatever it tracks (its hashing buffers), then with `series`.
        start = tracemalloc.get_traced_memory()[0]
        empty = tracker(1)
        fixed = tracemalloc.get_traced_memory()[0] - start
        del empty
        start = tracemalloc.get_traced_memory()[0]
        realized = tracker(series)
        for lo in range(0, series, MEMORY_BATCH):
            ids = [f"memory-{i}" for i in range(lo, min(lo + MEMORY_BATCH, series))]
            realized.submit(ids, batch[: len(ids)], forecasts[: len(ids)])
            realized.flush()
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert realized.tracked_series == series
    return {
        "series": series,
        "fixed_bytes": fixed,
        "bytes_per_series": (held - fixed) / series,
        "series_id_example": "memory-99999",
        "window": window,
        "horizon": horizon,
        "slot_bytes": 4 * (window - 1) + 4 * horizon + 4,
    }


def markdown(results: dict) -> str:
    model = results["model"]
    control = results["config"].get("control")
    lines = [
        f"# Realized-accuracy tracking: cost ({results['created_at']})",
        "",
        *(
            ["**Control run: both servers had tracking off** (the ratios are the noise).", ""]
            if control
            else []
        ),
        f"Model {model['version']}: window {model['window']} rows, horizon {model['horizon']}, "
        f"{len(model['features'])} features. Every window sent carries a series_id and "
        "continues its series' last window (matched and scored).",
        "",
        "| Mode | Concurrency | Pairs | Median on/off | Min | Max | Monitoring thread's "
        "CPU share (on) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, t in results["throughput"].items():
        share = t["median_monitor_cpu_share"]
        lines.append(
            f"| {MODES[mode].label} | {t['concurrency']} | {len(t['pairs'])} | "
            f"{_fmt(t['median_ratio'])} | {_fmt(t['min_ratio'])} | {_fmt(t['max_ratio'])} | "
            + (f"{share:.1%} |" if share is not None else "n/a |")
        )
    memory = results.get("memory")
    if memory:
        rss, traced = memory["service_rss"], memory["tracemalloc"]
        lines += [
            "",
            f"Memory per tracked series: {traced['bytes_per_series']:,.0f} bytes traced "
            f"(tracemalloc, {traced['series']:,} series; the slot's arrays are "
            f"{traced['slot_bytes']:,} of them), {rss['bytes_per_series']:,.0f} bytes of RSS "
            f"in the service ({rss['series']:,} series, growth of the tracking server minus "
            "the other's).",
        ]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
