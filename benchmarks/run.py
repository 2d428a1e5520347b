"""One comparison run: the model ceiling and every server under the same load, side by side.

Order of work:

1. The model ceiling process (``benchmarks.model_ceiling --serve``), the servers (see
   :func:`benchmarks.servers.systems`, less those left out with ``--systems``) and the client
   processes start in parallel; the run waits until the ceiling has compiled its buckets and
   every server is ready.
2. For each mode: the model ceiling is measured at that mode's batch size (servers and clients
   idle), then, for each concurrency level, the servers that run the mode (those that speak
   its protocol: the Open Inference Protocol modes run on the service and the KServe peer) are
   measured back to back (the order rotates from round to round), ``repeats`` rounds in all;
   each system's round with the median throughput is reported, and every round's throughput is
   kept beside it. Drift in the load of a shared machine thus hits every system alike, and
   each ratio compares near-simultaneous measurements. After each point the run waits until
   the server just measured is idle again. Idle servers sit on their sockets.
3. Monitoring overhead: for each mode both service variants ran, ``overhead_pairs``
   back-to-back pairs of the service with monitoring on and off at the concurrency where
   monitoring-off peaked, the order within the pair alternating, with the monitoring thread's
   share of the service's CPU read on each "on" point (see :func:`monitoring_overhead`; the
   report's figure uses both).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.load import ClientPool, PointResult
from benchmarks.machine import machine_info
from benchmarks.model_ceiling import CeilingProcess
from benchmarks.report import peak
from benchmarks.servers import (
    SYSTEM_NAMES,
    ServerProcess,
    System,
    batching_flags,
    server_env,
    systems,
)
from benchmarks.stats import per_second_cv, summarize
from benchmarks.workload import MODES, held_out, model_shape
from service.threads import MONITOR_THREAD

SCHEMA = "forecast-bench/1"


@dataclass(frozen=True)
class RunConfig:
    artifacts: Path
    output_dir: Path
    device: str
    duration: float
    warmup: float
    processes: int
    sweeps: dict[str, tuple[int, ...]]
    stream_depth: int
    timeout: float
    settle: float
    naive_workers: int
    server_cpus: tuple[int, ...] | None
    client_cpus: tuple[int, ...] | None
    batch_buckets: tuple[int, ...] | None = None  # None: the service's defaults
    max_batch_size: int | None = None
    repeats: int = 1
    overhead_pairs: int = 0  # paired on/off rounds per mode after the sweeps (0: none)
    systems: tuple[str, ...] = SYSTEM_NAMES  # the servers to measure, a subset of SYSTEM_NAMES
    kserve_python: Path | None = None  # the KServe peer's interpreter (needed for "kserve")
    skipped: dict[str, str] = field(default_factory=dict)  # system left out -> why

    def service_flags(self) -> tuple[str, ...]:
        """Batching flags passed to the service (the model ceiling uses the same buckets)."""
        return batching_flags(self.batch_buckets, self.max_batch_size)

    def selected_systems(self, version_dir: Path) -> list[System]:
        """The servers of this run, in report order."""
        every = systems(
            version_dir,
            naive_workers=self.naive_workers,
            service_flags=self.service_flags(),
            kserve_python=self.kserve_python if "kserve" in self.systems else None,
        )
        return [system for system in every if system.name in self.systems]

    def points(self, version_dir: Path) -> int:
        """Measurement points of the sweeps and the monitoring-overhead pairs (for the
        estimate of the run time)."""
        chosen = self.selected_systems(version_dir)
        count = self.repeats * sum(
            len(levels) * sum(system.runs(mode) for system in chosen)
            for mode, levels in self.sweeps.items()
        )
        return count + 2 * self.overhead_pairs * len(overhead_modes(chosen, self.sweeps))


def overhead_modes(chosen: list[System], modes) -> list[str]:
    """The modes that both the service with monitoring and without run (none when either is
    left out)."""
    by_name = {system.name: system for system in chosen}
    on, off = by_name.get("service"), by_name.get("service_no_monitoring")
    if on is None or off is None:
        return []
    return [mode for mode in modes if on.runs(mode) and off.runs(mode)]


def _sleep_until(wall_clock: float) -> None:
    time.sleep(max(0.0, wall_clock - time.time()))


def measure_point(
    pool: ClientPool, server: ServerProcess, mode: str, concurrency: int, config: RunConfig
) -> dict:
    """Load ``server`` for warm-up + duration; the figures of the measured window."""
    start_at, processes, lanes = pool.start(
        server.target,
        mode,
        concurrency,
        warmup=config.warmup,
        duration=config.duration,
        timeout=config.timeout,
        stream_depth=config.stream_depth,
    )
    _sleep_until(start_at + config.warmup)
    cpu_start, threads_start = server.cpu_seconds(), server.thread_cpu_seconds()
    metrics_start = server.scrape()
    _sleep_until(start_at + config.warmup + config.duration)
    cpu_end, threads_end = server.cpu_seconds(), server.thread_cpu_seconds()
    metrics_end = server.scrape()
    rss = server.rss_bytes()
    result: PointResult = pool.collect(processes, lanes)
    idle_wait = server.wait_idle()
    figures = summarize(
        result.latencies,
        windows_per_request=MODES[mode].windows_per_request,
        seconds=config.duration,
        errors=sum(result.errors.values()),
    )
    calls = metrics_end.get("forecast_batch_size_count", 0) - metrics_start.get(
        "forecast_batch_size_count", 0
    )
    batched = metrics_end.get("forecast_batch_size_sum", 0) - metrics_start.get(
        "forecast_batch_size_sum", 0
    )
    return {
        "concurrency": concurrency,
        "client_processes": processes,
        "lanes": lanes,
        **figures,
        "error_codes": result.errors,
        "requests_per_s_cv": per_second_cv(result.completions, config.duration),
        "client_cpu_cores": result.client_cpu_seconds / config.duration,
        "server_cpu_cores": (cpu_end - cpu_start) / config.duration,
        # Per OS thread name, the busiest first (the service's model and monitoring threads
        # are named; CPU that monitoring takes is read here without the machine's drift).
        "server_thread_cpu_cores": dict(
            sorted(
                (
                    (name, (t - threads_start.get(name, 0.0)) / config.duration)
                    for name, t in threads_end.items()
                    if t > threads_start.get(name, 0.0)
                ),
                key=lambda item: -item[1],
            )
        ),
        "server_rss_mib": rss / 2**20,
        "mean_model_batch": (batched / calls) if calls else None,
        "seconds_until_server_idle": idle_wait,
    }


def median_round(points: list[dict]) -> dict:
    """The round with the median throughput (the lower middle one for an even count), with
    every round's throughput beside it, so the spread of the repeats stays visible."""
    ranked = sorted(points, key=lambda p: p["windows_per_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["rounds_requests_per_s"] = [p["requests_per_s"] for p in points]
    chosen["rounds"] = len(points)
    return chosen


def run(config: RunConfig, *, progress=print) -> dict:
    version_dir, shape, manifest = model_shape(config.artifacts)
    windows = held_out(manifest)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started = time.time()

    from service.config import Settings

    largest = config.max_batch_size or Settings().max_batch_size
    # Each batch size is measured just before the first mode compared with it; the unary modes
    # also get the largest bucket, the batch the service forms under single-window load.
    ceiling_sizes: dict[str, list[int]] = {}
    for mode in config.sweeps:
        size = MODES[mode].windows_per_request
        wanted = (size, largest) if size == 1 else (size,)
        ceiling_sizes[mode] = [
            s for s in wanted if s not in {x for v in ceiling_sizes.values() for x in v}
        ]

    results: dict = {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine,
        "config": {
            **{
                k: v
                for k, v in asdict(config).items()
                if k not in ("artifacts", "output_dir", "kserve_python")
            },
            "artifacts": str(version_dir),
            "sweeps": {m: list(levels) for m, levels in config.sweeps.items()},
            "service_flags": list(config.service_flags()),
            "modes": {m: MODES[m].label for m in config.sweeps},
            "pinning": "none (the OS schedules clients and servers over every core)"
            if config.server_cpus is None
            else f"servers and model ceiling on CPUs {list(config.server_cpus)}, "
            f"clients on {list(config.client_cpus or [])}",
        },
        "model": {
            "version": shape.version,
            "window": shape.window,
            "horizon": shape.horizon,
            "features": list(shape.feature_names),
            "held_out_windows": len(windows),
        },
        "model_ceiling": {"by_batch_size": {}},
        "devices": {},
        "systems": {},
    }
    logs = config.output_dir / "logs"
    logs.mkdir(exist_ok=True)
    buckets = (
        ("--buckets", ",".join(map(str, config.batch_buckets))) if config.batch_buckets else ()
    )
    with contextlib.ExitStack() as stack:
        ceiling = stack.enter_context(
            CeilingProcess(
                [
                    "--artifacts",
                    str(version_dir),
                    "--warmup",
                    str(config.warmup),
                    "--duration",
                    str(config.duration),
                    *buckets,
                ],
                env=server_env(config.device),
                log_path=logs / "model_ceiling.log",
                cpus=config.server_cpus,
            )
        )
        servers = [
            stack.enter_context(
                ServerProcess(
                    system,
                    logs / f"{system.name}.log",
                    env=server_env(config.device),
                    cpus=config.server_cpus,
                )
            )
            for system in config.selected_systems(version_dir)
        ]
        progress(
            "starting the model ceiling, "
            + ", ".join(s.system.name for s in servers)
            + f" and {config.processes} client processes (in parallel) ..."
        )
        pool = stack.enter_context(
            ClientPool(config.processes, windows, shape.horizon, cpus=config.client_cpus)
        )
        info = ceiling.wait_ready()
        results["devices"]["model_ceiling"] = info["device"]
        results["model_ceiling"].update(info)
        results["config"]["model_ceiling_buckets"] = info["buckets"]
        for server in servers:  # each must report SERVING (the service: after its warm-up)
            server.wait_ready()
            system = server.system
            results["devices"][system.name] = server.device
            results["systems"][system.name] = {
                "label": system.label,
                "startup_rss_mib": server.rss_bytes() / 2**20,
                "modes": {mode: [] for mode in config.sweeps if system.runs(mode)},
            }
        k = 0
        for mode, levels in config.sweeps.items():
            in_mode = [s for s in servers if s.system.runs(mode)]
            if not in_mode:
                progress(f"{mode}: no selected system runs it")
                continue
            progress(
                f"{mode} ({MODES[mode].label}): concurrency {', '.join(map(str, levels))} on "
                + ", ".join(s.system.name for s in in_mode)
            )
            for size in ceiling_sizes[mode]:
                figures = ceiling.measure(size)  # servers and clients idle meanwhile
                results["model_ceiling"]["by_batch_size"][str(size)] = figures
                progress(
                    f"  model ceiling, batch {size:>3}: {figures['windows_per_s']:,.0f} "
                    f"windows/s, p50 {figures['p50_ms']:.2f} ms"
                )
            for concurrency in levels:
                rounds: dict[str, list[dict]] = {s.system.name: [] for s in in_mode}
                for _ in range(config.repeats):
                    order = in_mode[k % len(in_mode) :] + in_mode[: k % len(in_mode)]
                    k += 1
                    for server in order:
                        time.sleep(config.settle)
                        point = measure_point(pool, server, mode, concurrency, config)
                        rounds[server.system.name].append(point)
                        progress(_progress_line(server.system.name, mode, point))
                for name, points in rounds.items():
                    results["systems"][name]["modes"][mode].append(median_round(points))
        paired_modes = overhead_modes([s.system for s in servers], config.sweeps)
        if config.overhead_pairs and paired_modes:
            by_name = {s.system.name: s for s in servers}
            results["monitoring_overhead"] = {
                mode: monitoring_overhead(
                    pool,
                    by_name["service"],
                    by_name["service_no_monitoring"],
                    mode,
                    _peak_concurrency(results["systems"]["service_no_monitoring"]["modes"][mode]),
                    config,
                    progress=progress,
                )
                for mode in paired_modes
            }
        for server in servers:
            results["systems"][server.system.name]["final_rss_mib"] = server.rss_bytes() / 2**20
    for name in results["systems"]:
        results["systems"][name]["modes"] = {
            mode: sorted(points, key=lambda p: p["concurrency"])
            for mode, points in results["systems"][name]["modes"].items()
        }
    results["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["wall_seconds"] = round(time.time() - started, 1)
    return results


def monitoring_overhead(
    pool: ClientPool,
    on: ServerProcess,
    off: ServerProcess,
    mode: str,
    concurrency: int,
    config: RunConfig,
    *,
    progress=print,
) -> dict:
    """Throughput with monitoring on over off, as paired back-to-back points at one
    concurrency, the pair's order alternating (on first, then off first, ...).

    Load on this machine drifts by more than the effect being measured (runs differ by up to
    20%), and a ratio of two sweep peaks taken minutes apart carries all of that drift. The two
    points of a pair are seconds apart, so each pair's ratio cancels most of it; every pair is
    kept, with the median. The monitoring thread's CPU share (kernel per-thread accounting)
    carries no drift at all; its median is kept beside the ratios."""
    pairs = []
    for i in range(config.overhead_pairs):
        pairs.append(measure_pair(pool, on, off, mode, concurrency, config, on_first=i % 2 == 0))
        progress(
            f"  monitoring on/off {mode:<8} c={concurrency:<4} pair {i + 1}: "
            + describe_pair(pairs[-1])
        )
    return summarize_pairs(concurrency, pairs)


def measure_pair(
    pool,
    on: ServerProcess,
    off: ServerProcess,
    mode: str,
    concurrency: int,
    config: RunConfig,
    *,
    on_first: bool,
) -> dict:
    """One back-to-back pair of points, "on" then "off" or the other way round: the
    throughput of each, their ratio, errors and the "on" monitoring thread's CPU share."""
    got = {}
    for server in (on, off) if on_first else (off, on):
        time.sleep(config.settle)
        got[server.system.name] = measure_point(pool, server, mode, concurrency, config)
    w_on = got[on.system.name]["windows_per_s"]
    w_off = got[off.system.name]["windows_per_s"]
    return {
        "first": "on" if on_first else "off",
        "on_windows_per_s": w_on,
        "off_windows_per_s": w_off,
        "ratio": w_on / w_off if w_off else None,
        "errors": got[on.system.name]["errors"] + got[off.system.name]["errors"],
        "on_monitor_cpu_share": monitor_cpu_share(got[on.system.name]),
        "on_server_cpu_cores": got[on.system.name]["server_cpu_cores"],
        "off_server_cpu_cores": got[off.system.name]["server_cpu_cores"],
    }  # fmt: skip


def describe_pair(pair: dict) -> str:
    ratio = f"{pair['ratio']:.3f}" if pair["ratio"] is not None else "n/a"
    return f"{pair['on_windows_per_s']:,.0f} / {pair['off_windows_per_s']:,.0f} windows/s = {ratio}"


def summarize_pairs(concurrency: int, pairs: list[dict]) -> dict:
    """Every pair, with the median, least and greatest ratio and the median CPU share."""
    ratios = sorted(p["ratio"] for p in pairs if p["ratio"] is not None)
    shares = [p["on_monitor_cpu_share"] for p in pairs if p["on_monitor_cpu_share"] is not None]
    return {
        "concurrency": concurrency,
        "pairs": pairs,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "min_ratio": ratios[0] if ratios else None,
        "max_ratio": ratios[-1] if ratios else None,
        "median_monitor_cpu_share": statistics.median(shares) if shares else None,
    }


def monitor_cpu_share(point: dict) -> float | None:
    """The monitoring thread's share of the service's CPU during a point (None when the
    server used no CPU or has no thread of that name)."""
    total = point["server_cpu_cores"]
    monitor = point["server_thread_cpu_cores"].get(MONITOR_THREAD)
    return monitor / total if monitor is not None and total > 0 else None


def _progress_line(system: str, mode: str, point: dict) -> str:
    p50 = point["p50_ms"]
    p99 = point["p99_ms"]
    lat = f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms" if p50 is not None else "no successful call"
    return (
        f"  {mode:<8} c={point['concurrency']:<4} {system:<22} "
        f"{point['requests_per_s']:9,.0f} req/s {point['windows_per_s']:9,.0f} win/s  {lat}  "
        f"err {point['errors']}  cpu server {point['server_cpu_cores']:.2f} "
        f"clients {point['client_cpu_cores']:.2f}"
    )


def _peak_concurrency(points: list[dict]) -> int:
    """The concurrency of the highest windows/s among ``points``."""
    best = peak(points, "windows_per_s")
    if best is None:
        raise RuntimeError("no successful point to pair monitoring on and off at")
    return int(best["concurrency"])
