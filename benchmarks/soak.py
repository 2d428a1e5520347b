"""The memory soak: the service under sustained mixed load, its RSS sampled from /proc.

One service process (default settings, monitoring on, /metrics scraped at every sample as a
Prometheus would) is loaded for ``warmup + minutes`` by client processes that each run one
mode (single-window unary, streams, 64-window batches, ...). RSS is read every
``sample_seconds``; the figures use only samples taken after the warm-up.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.load import ClientPool, plan
from benchmarks.machine import machine_info
from benchmarks.servers import ServerProcess, server_env, systems
from benchmarks.stats import summarize
from benchmarks.workload import MODES, held_out, model_shape

FLAT_WITHIN = 0.10


@dataclass(frozen=True)
class SoakConfig:
    artifacts: Path
    output_dir: Path
    device: str
    minutes: float
    warmup: float
    sample_seconds: float
    processes: int
    modes: tuple[str, ...]
    concurrency: int  # in-flight requests per client process
    stream_depth: int
    timeout: float
    server_cpus: tuple[int, ...] | None
    client_cpus: tuple[int, ...] | None
    service_flags: tuple[str, ...] = ()


def rss_figures(samples: list[tuple[float, float]], warmup: float) -> dict:
    """first / last / max / min RSS (MiB) of the samples taken after ``warmup`` seconds."""
    after = [mib for t, mib in samples if t >= warmup]
    if not after:
        raise ValueError("no RSS sample after the warm-up; lengthen the soak")
    first = after[0]
    return {
        "samples_after_warmup": len(after),
        "first_mib": first,
        "last_mib": after[-1],
        "max_mib": max(after),
        "min_mib": min(after),
        "last_over_first": after[-1] / first,
        "max_over_first": max(after) / first,
        "min_over_first": min(after) / first,
        "flat_within_10pct": max(after) / first <= 1 + FLAT_WITHIN
        and min(after) / first >= 1 - FLAT_WITHIN,
    }


def run_soak(config: SoakConfig, *, progress=print) -> dict:
    version_dir, shape, manifest = model_shape(config.artifacts)
    windows = held_out(manifest)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    (config.output_dir / "logs").mkdir(exist_ok=True)
    machine = machine_info()
    started = time.time()
    service = next(
        s
        for s in systems(version_dir, naive_workers=1, service_flags=config.service_flags)
        if s.name == "service"
    )
    measured = config.minutes * 60.0
    progress(f"starting {service.name} ...")
    with (
        ServerProcess(
            service,
            config.output_dir / "logs" / "soak-service.log",
            env=server_env(config.device),
            cpus=config.server_cpus,
        ) as server,
        ClientPool(config.processes, windows, shape.horizon, cpus=config.client_cpus) as pool,
    ):
        server.wait_ready()
        modes = [config.modes[p % len(config.modes)] for p in range(config.processes)]
        shares = [
            (m, plan(MODES[m].rpc, config.concurrency, 1, config.stream_depth)[0]) for m in modes
        ]
        progress(
            f"soak: {config.warmup:g} s warm-up + {config.minutes:g} min, clients {modes}, "
            f"{config.concurrency} in flight each"
        )
        start_at = pool.start_jobs(
            server.target, shares, warmup=config.warmup, duration=measured, timeout=config.timeout
        )
        end = start_at + config.warmup + measured
        samples: list[tuple[float, float]] = []
        cpu: list[tuple[float, float]] = []
        next_sample = start_at
        while next_sample <= end + 1e-6:
            time.sleep(max(0.0, next_sample - time.time()))
            server.scrape()
            t = time.time() - start_at
            samples.append((round(t, 2), server.rss_bytes() / 2**20))
            cpu.append((round(t, 2), server.cpu_seconds()))
            if len(samples) % max(1, int(60 / config.sample_seconds)) == 0:
                progress(f"  t={t:6.0f} s  RSS {samples[-1][1]:.1f} MiB")
            next_sample += config.sample_seconds
        results = pool.collect_each()
        device = server.device
    by_mode = {}
    for mode in dict.fromkeys(modes):
        mine = [r for r, m in zip(results, modes, strict=True) if m == mode]
        latencies = np.concatenate([r.latencies for r in mine])
        errors = sum(sum(r.errors.values()) for r in mine)
        by_mode[mode] = {
            **summarize(
                latencies,
                windows_per_request=MODES[mode].windows_per_request,
                seconds=measured,
                errors=errors,
            ),
            "error_codes": {k: v for r in mine for k, v in r.errors.items()},
        }
    cpu_after = [(t, s) for t, s in cpu if t >= config.warmup]
    cpu_cores = (
        (cpu_after[-1][1] - cpu_after[0][1]) / (cpu_after[-1][0] - cpu_after[0][0])
        if len(cpu_after) > 1
        else None
    )
    return {
        "schema": "forecast-soak/1",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {**machine, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "config": {
            **{k: v for k, v in asdict(config).items() if k not in ("artifacts", "output_dir")},
            "artifacts": str(version_dir),
            "client_modes": modes,
        },
        "model": {"version": shape.version},
        "device": device,
        "minutes": config.minutes,
        "rss": rss_figures(samples, config.warmup),
        "rss_samples_mib": samples,
        "server_cpu_cores_after_warmup": cpu_cores,
        "load": by_mode,
        "wall_seconds": round(time.time() - started, 1),
    }


def markdown(soak: dict) -> str:
    rss = soak["rss"]
    lines = [
        f"# Soak {soak['created_at']}",
        "",
        f"Service (monitoring on), device {soak['device']}, {soak['minutes']:g} min after a "
        f"{soak['config']['warmup']:g} s warm-up; clients {soak['config']['client_modes']} "
        f"with {soak['config']['concurrency']} in flight each; RSS sampled every "
        f"{soak['config']['sample_seconds']:g} s from /proc.",
        "",
        "| RSS after warm-up | MiB |",
        "|---|---|",
        f"| first | {rss['first_mib']:.1f} |",
        f"| last | {rss['last_mib']:.1f} ({rss['last_over_first']:.3f}× first) |",
        f"| max | {rss['max_mib']:.1f} ({rss['max_over_first']:.3f}× first) |",
        f"| min | {rss['min_mib']:.1f} ({rss['min_over_first']:.3f}× first) |",
        f"| flat within 10% | {'yes' if rss['flat_within_10pct'] else '**no**'} |",
        "",
        "| Client mode | req/s | windows/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for mode, f in soak["load"].items():
        p50 = "–" if f["p50_ms"] is None else f"{f['p50_ms']:.2f}"
        p99 = "–" if f["p99_ms"] is None else f"{f['p99_ms']:.2f}"
        lines.append(
            f"| {mode} | {f['requests_per_s']:,.0f} | {f['windows_per_s']:,.0f} | "
            f"{p50} | {p99} | {f['errors']} |"
        )
    return "\n".join(lines) + "\n"


def plot(soak: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, mib = zip(*soak["rss_samples_mib"], strict=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, mib, ".-")
    ax.axvline(soak["config"]["warmup"], color="gray", linestyle=":", label="end of warm-up")
    first = soak["rss"]["first_mib"]
    ax.axhspan(
        first * (1 - FLAT_WITHIN),
        first * (1 + FLAT_WITHIN),
        color="tab:green",
        alpha=0.1,
        label="±10% of first sample after warm-up",
    )
    ax.set_xlabel("seconds since load started")
    ax.set_ylabel("service RSS, MiB")
    ax.set_title(f"Service RSS under sustained load ({soak['created_at']})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
