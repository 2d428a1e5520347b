"""``python -m benchmarks``: the service against its ceilings and the naive server, in one run.

    python -m benchmarks [run] [--duration 5 --warmup 2 --processes 4 ...]
    python -m benchmarks soak --minutes 5
    python -m benchmarks tracking        # realized-accuracy tracking on vs off, memory/series
    python -m benchmarks report          # rebuild bench.md/.png and the targets from the JSON

``run`` (the default) measures, side by side on this machine: the in-process model ceiling,
a bare gRPC echo server (transport ceiling), a naive model.predict-per-request server, the
service with monitoring on and off, the service with ``--workers 2``, and the same model behind
KServe's Python ModelServer (its own environment: ``make kserve-venv``), under the same client
load (several client processes, grpc.aio, a concurrency sweep per mode; the Open Inference
Protocol modes on the systems that speak it). ``--systems`` and ``--modes`` pick a subset. It
writes bench.json, bench.md and bench.png.
``soak`` loads the service for minutes and checks its RSS stays flat (soak.json/.md/.png).
``tracking`` measures what realized-accuracy tracking costs: throughput of two services that
differ only in ``--realized-tracking``, as interleaved on/off pairs, every window sent under a
series id and continuing its series; then memory per tracked series (tracking.json/.md).
``report`` rebuilds bench.md, bench.png and the targets from bench.json and soak.json (run it
after a soak that followed the comparison run, so the memory target is filled in).

Exit codes: 0 when the measurements were taken (whether targets are met or not; see the
report); 2 for bad flags or a missing/unusable trained model (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.servers import KSERVE_PYTHON, SYSTEM_NAMES
from training.cli import command_parser, int_list, positive

PROG = "python -m benchmarks"

DEFAULT_SWEEPS = {
    "unary": "1,8,32,128",
    "batch64": "1,4,16",
    "batch256": "1,4,16",
    "stream": "1,8,32,128",
    "oip1": "1,8,32,128",
    "oip256": "1,4,16",
}
# The Open Inference Protocol modes carry no series ids, so `tracking` runs forecast.v1 only.
TRACKING_MODES = ("unary", "batch64", "batch256", "stream")
# `tracking`'s concurrency per mode: where the service peaked in the last full bench.
TRACKING_CONCURRENCY = {"unary": 32, "batch64": 16, "batch256": 4, "stream": 128}


# CPU numbers ("0,1"), and sets of sizes such as concurrency levels or batch buckets ("1,8,32").
def _cpus(text: str) -> tuple[int, ...]:
    return int_list(text, minimum=0, too_small=f"expected non-negative integers, got {text!r}")


def _levels(text: str) -> tuple[int, ...]:
    return int_list(text, unique_sorted=True, too_small="concurrency levels must be >= 1")


def _names(known: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    """A parser of a comma-separated subset of ``known`` (``what``: "mode", "system")."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(m.strip() for m in text.split(",") if m.strip())
        unknown = [m for m in names if m not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what}(s) {', '.join(unknown) or '(none)'}; choose from "
                + ", ".join(known)
            )
        return names

    return parse


_modes = _names(tuple(DEFAULT_SWEEPS), "mode")
_systems = _names(SYSTEM_NAMES, "system")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="trained version directory, or base directory (newest version)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("results"),
        help="where the JSON, markdown, PNG and server logs go",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu hides every GPU from the servers and the model ceiling "
        "(CUDA_VISIBLE_DEVICES=''); gpu leaves them visible. The report "
        "states the device each server actually used",
    )
    parser.add_argument(
        "--timeout",
        type=positive(float),
        default=30.0,
        help="per-call deadline, seconds (a call past it is an error)",
    )
    parser.add_argument(
        "--stream-depth",
        type=positive(int),
        default=8,
        help="StreamForecast messages in flight per stream (concurrency in "
        "stream mode counts messages in flight, spread over streams)",
    )
    parser.add_argument(
        "--server-cpus",
        type=_cpus,
        default=None,
        help="pin the servers and the model ceiling to these CPUs, e.g. 0 (unset: no pinning)",
    )
    parser.add_argument(
        "--client-cpus",
        type=_cpus,
        default=None,
        help="pin the client processes to these CPUs, e.g. 1 (unset: no pinning)",
    )
    parser.add_argument(
        "--batch-buckets",
        type=_levels,
        default=None,
        help="the service's --batch-buckets, also used by the model ceiling "
        "(unset: the service's own default)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=positive(int),
        default=None,
        help="the service's --max-batch-size (unset: the service's own default)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        PROG,
        "Measure the forecast service against its ceilings and the naive server, side by side "
        "in one run.",
        epilog="`python -m benchmarks run --help`, `... soak --help` and `... tracking --help` "
        "list every flag.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,soak,tracking,report}")
    run = sub.add_parser(
        "run",
        help="the side-by-side comparison (the default command)",
        description="Measure the model ceiling, the transport ceiling, the naive server and "
        "the service (monitoring on and off) in one run, under the same client load.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _common(run)
    run.add_argument(
        "--duration",
        type=positive(float),
        default=3.0,
        help="measured seconds per point (and per model-ceiling batch size)",
    )
    run.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of load before each measurement, excluded from the figures",
    )
    run.add_argument(
        "--processes",
        type=positive(int),
        default=4,
        help="client processes (one Python process tops out near 1,500 unary "
        "calls/s, so several are needed)",
    )
    run.add_argument(
        "--modes",
        type=_modes,
        default=",".join(DEFAULT_SWEEPS),
        help="modes to measure: " + ", ".join(DEFAULT_SWEEPS),
    )
    run.add_argument(
        "--systems",
        type=_systems,
        default=None,
        help="servers to measure (unset: all; kserve only when its environment exists): "
        + ", ".join(SYSTEM_NAMES),
    )
    run.add_argument(
        "--kserve-python",
        type=Path,
        default=KSERVE_PYTHON,
        help="interpreter of the KServe peer's environment (`make kserve-venv` creates it)",
    )
    run.add_argument(
        "--concurrency",
        type=_levels,
        default=None,
        help="one sweep (requests in flight over all client processes) for every "
        "mode without its own flag below (unset: each mode's default)",
    )
    for mode, levels in DEFAULT_SWEEPS.items():
        run.add_argument(
            f"--{mode}-concurrency",
            type=_levels,
            default=None,
            help=f"concurrency sweep of {mode} (unset: --concurrency, else {levels})",
        )
    run.add_argument(
        "--repeats",
        type=positive(int),
        default=3,
        help="rounds per point, each over every system in rotated order; the "
        "round with the median throughput is reported (all rounds are kept)",
    )
    run.add_argument(
        "--overhead-pairs",
        type=positive(int, zero_ok=True),
        default=16,
        help="after the sweeps, back-to-back pairs of the service with monitoring "
        "on and off per mode, at the concurrency where monitoring-off peaked; the "
        "median pair's ratio is the monitoring-overhead figure (0: use the ratio "
        "of the sweep peaks instead). Pair ratios scatter by about 5%% sd on a "
        "shared 2-core machine; 16 pairs put the median within about 1.5%%",
    )
    run.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="idle seconds before each point (lets cancelled work drain)",
    )
    run.add_argument(
        "--naive-workers",
        type=positive(int),
        default=10,
        help="thread-pool size of the naive server",
    )
    soak = sub.add_parser(
        "soak",
        help="sustained load on the service, RSS sampled (memory flatness)",
        description="Load the service (monitoring on) for --minutes after --warmup and sample "
        "its RSS from /proc every --sample-seconds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _common(soak)
    soak.add_argument(
        "--minutes",
        type=positive(float),
        default=5.0,
        help="measured minutes of sustained load, after the warm-up",
    )
    soak.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds of load before the first RSS sample that counts",
    )
    soak.add_argument(
        "--sample-seconds",
        type=positive(float),
        default=5.0,
        help="RSS sampling (and /metrics scrape) interval",
    )
    soak.add_argument(
        "--processes",
        type=positive(int),
        default=3,
        help="client processes, each running one mode of --modes (round robin)",
    )
    soak.add_argument(
        "--modes",
        type=_modes,
        default="unary,stream,batch64",
        help="client modes, assigned to processes in turn",
    )
    soak.add_argument(
        "--concurrency",
        type=positive(int),
        default=16,
        help="requests in flight per client process",
    )
    tracking = sub.add_parser(
        "tracking",
        help="realized-accuracy tracking on vs off: paired throughput, memory per series",
        description="Two services differing only in --realized-tracking, loaded in turn by the "
        "same clients (every window under a series id, continuing its series): interleaved "
        "on/off pairs per mode, then the memory per tracked series.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _common(tracking)
    tracking.add_argument(
        "--modes",
        type=_names(TRACKING_MODES, "mode"),
        default="unary,batch64",
        help="modes to measure: " + ", ".join(TRACKING_MODES),
    )
    for mode, level in TRACKING_CONCURRENCY.items():
        tracking.add_argument(
            f"--{mode}-concurrency",
            type=positive(int),
            default=level,
            help=f"requests in flight in {mode} mode (near the service's peak in the bench)",
        )
    tracking.add_argument(
        "--pairs", type=positive(int), default=12, help="on/off pairs per mode, order alternating"
    )
    tracking.add_argument(
        "--duration", type=positive(float), default=3.0, help="measured seconds per point"
    )
    tracking.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before each measurement"
    )
    tracking.add_argument(
        "--settle", type=float, default=0.5, help="idle seconds before each point"
    )
    tracking.add_argument("--processes", type=positive(int), default=4, help="client processes")
    tracking.add_argument(
        "--memory-series",
        type=positive(int),
        default=100_000,
        help="new series sent (one window each) to measure the memory per tracked series",
    )
    tracking.add_argument(
        "--control",
        action="store_true",
        help="both servers with tracking off (same names): the ratios then measure the noise "
        "of the pairs alone; no memory step",
    )
    report = sub.add_parser(
        "report",
        help="rebuild the markdown, plot and targets from the JSON results",
        description="Read bench.json (and soak.json when present) in --output-dir and rewrite "
        "bench.json's targets, bench.md and bench.png. Measures nothing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument(
        "--output-dir",
        type=Path,
        default=Path("results"),
        help="where bench.json and soak.json are",
    )
    report.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level",
    )
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    if not argv or argv[0] not in ("run", "soak", "tracking", "report", "-h", "--help"):
        argv = ["run", *argv]
    return build_parser().parse_args(argv)


def _check_artifacts(path: Path) -> str | None:
    """A one-line problem with the trained model, or None."""
    from benchmarks.workload import model_shape
    from training.artifacts import ArtifactError, list_versions

    if not path.exists() or (not (path / "manifest.json").is_file() and not list_versions(path)):
        return f"no trained model in {path}/; run `make train` first"
    try:
        model_shape(path)  # resolves the version and verifies its checksums
    except ArtifactError as exc:
        return str(exc)
    return None


def _write_run(results: dict, output_dir: Path) -> list[Path]:
    from benchmarks import report

    soak_path = output_dir / "soak.json"
    soak = json.loads(soak_path.read_text()) if soak_path.is_file() else None
    results["targets"] = report.targets(results, soak)
    paths = [output_dir / "bench.json", output_dir / "bench.md", output_dir / "bench.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(report.markdown(results))
    report.plot(results, paths[2])
    return paths


def _kserve_missing(args: argparse.Namespace) -> str | None:
    """Why the KServe peer cannot run, when it is chosen and its interpreter is missing."""
    if "kserve" not in (args.systems or SYSTEM_NAMES) or args.kserve_python.is_file():
        return None
    return f"no interpreter at {args.kserve_python}; `make kserve-venv` creates it"


def _run(args: argparse.Namespace) -> int:
    from benchmarks.run import RunConfig, run
    from benchmarks.workload import model_shape

    sweeps = {
        m: getattr(args, f"{m}_concurrency") or args.concurrency or _levels(DEFAULT_SWEEPS[m])
        for m in args.modes
    }
    # Without its environment the KServe peer is left out of the default selection (main()
    # refuses it when --systems names it).
    reason = _kserve_missing(args)
    chosen = tuple(n for n in args.systems or SYSTEM_NAMES if not (reason and n == "kserve"))
    skipped = {"kserve": reason} if reason else {}
    if reason:
        print(f"{PROG}: warning: leaving kserve out: {reason}", file=sys.stderr)
    config = RunConfig(
        artifacts=args.artifacts,
        output_dir=args.output_dir,
        device=args.device,
        duration=args.duration,
        warmup=args.warmup,
        processes=args.processes,
        sweeps=sweeps,
        stream_depth=args.stream_depth,
        timeout=args.timeout,
        settle=args.settle,
        repeats=args.repeats,
        overhead_pairs=args.overhead_pairs,
        naive_workers=args.naive_workers,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
        batch_buckets=args.batch_buckets,
        max_batch_size=args.max_batch_size,
        systems=chosen,
        kserve_python=args.kserve_python.absolute(),  # not resolved: a venv's python is a link
        skipped=skipped,
    )
    points = config.points(model_shape(args.artifacts)[0])
    per_point = args.warmup + args.duration + args.settle + 0.7
    print(
        f"{points} points x ~{per_point:.1f} s + start-up: about "
        f"{(points * per_point + 90) / 60:.0f} min",
        file=sys.stderr,
    )
    results = run(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    paths = _write_run(results, args.output_dir)
    _warn_device(args.device, results["devices"])
    from benchmarks.report import targets_table

    print(targets_table(results["targets"]))
    print("\nwrote " + ", ".join(map(str, paths)))
    return 0


def _report(args: argparse.Namespace) -> int:
    path = args.output_dir / "bench.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: cannot read {path}: {exc}; run `{PROG} run` first", file=sys.stderr)
        return 2
    paths = _write_run(results, args.output_dir)
    from benchmarks.report import targets_table

    print(targets_table(results["targets"]))
    print("\nwrote " + ", ".join(map(str, paths)))
    return 0


def _soak(args: argparse.Namespace) -> int:
    from benchmarks import soak
    from benchmarks.servers import batching_flags

    config = soak.SoakConfig(
        artifacts=args.artifacts,
        output_dir=args.output_dir,
        device=args.device,
        minutes=args.minutes,
        warmup=args.warmup,
        sample_seconds=args.sample_seconds,
        processes=args.processes,
        modes=args.modes,
        concurrency=args.concurrency,
        stream_depth=args.stream_depth,
        timeout=args.timeout,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
        service_flags=batching_flags(args.batch_buckets, args.max_batch_size),
    )
    results = soak.run_soak(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    paths = [
        args.output_dir / "soak.json",
        args.output_dir / "soak.md",
        args.output_dir / "soak.png",
    ]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(soak.markdown(results))
    soak.plot(results, paths[2])
    _warn_device(args.device, {"service": results["device"]})
    print(soak.markdown(results))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _tracking(args: argparse.Namespace) -> int:
    from benchmarks import tracking
    from benchmarks.servers import batching_flags

    config = tracking.TrackingConfig(
        artifacts=args.artifacts,
        output_dir=args.output_dir,
        device=args.device,
        modes=args.modes,
        concurrency={m: getattr(args, f"{m}_concurrency") for m in args.modes},
        pairs=args.pairs,
        duration=args.duration,
        warmup=args.warmup,
        settle=args.settle,
        processes=args.processes,
        stream_depth=args.stream_depth,
        timeout=args.timeout,
        memory_series=args.memory_series,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
        service_flags=batching_flags(args.batch_buckets, args.max_batch_size),
        control=args.control,
    )
    per_pair = 2 * (args.warmup + args.duration + args.settle + 0.7)
    print(
        f"{len(args.modes) * args.pairs} pairs x ~{per_pair:.0f} s + start-up and memory: about "
        f"{(len(args.modes) * args.pairs * per_pair + 150) / 60:.0f} min",
        file=sys.stderr,
    )
    results = tracking.run_tracking(
        config, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    name = "tracking-control" if args.control else "tracking"
    paths = [args.output_dir / f"{name}.json", args.output_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(tracking.markdown(results))
    print(tracking.markdown(results))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _warn_device(requested: str, devices: dict[str, str]) -> None:
    wrong = {k: v for k, v in devices.items() if v not in (requested.upper(), "none")}
    if wrong:
        print(
            f"{PROG}: warning: --device {requested} but "
            + ", ".join(f"{k} ran on {v}" for k, v in wrong.items()),
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.command == "report":
        return _report(args)
    if args.server_cpus is not None or args.client_cpus is not None:
        import os

        usable = os.sched_getaffinity(0)
        for flag, cpus in (
            ("--server-cpus", args.server_cpus),
            ("--client-cpus", args.client_cpus),
        ):
            if cpus is not None and not set(cpus) <= usable:
                print(
                    f"{PROG}: error: {flag} {cpus} not within usable CPUs {sorted(usable)}",
                    file=sys.stderr,
                )
                return 2
    if args.command == "run" and args.systems and (reason := _kserve_missing(args)):
        print(f"{PROG}: error: --systems kserve: {reason}", file=sys.stderr)
        return 2
    problem = _check_artifacts(args.artifacts)
    if problem is not None:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    from benchmarks.workload import WorkloadError

    try:
        if args.command == "tracking":
            return _tracking(args)
        return _run(args) if args.command == "run" else _soak(args)
    except WorkloadError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
