"""How soon realized accuracy shows a degraded model: ``python -m benchmarks.degraded``.

Publishes copies of a version whose every forecast is shifted by a multiple of the version's
validation persistence MAE (``training.faults.shift``: the model still follows its inputs, so
the collapse and drift detectors see nothing), serves each, and the version itself as a
control, with ``python -m service``, and sends the version's held-out windows in time order,
one per request, under one ``series_id``. After every request it reads the realized-accuracy
counters from the real ``/metrics`` endpoint. Reported per model: the scored values after which
the ratio of the cumulative absolute errors (model over persistence, as
``ForecastWorseThanPersistence`` reads it) first exceeds 1.0, the count after which it stays
above 1.0 to the end, and the final ratio.

Exit codes: 0 when measured; 2 for bad flags or an unusable version (one line on stderr).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.servers import ServerProcess, System, server_env
from benchmarks.workload import WorkloadError, held_out, model_shape
from service.api import pb, pb_grpc
from training.artifacts import ArtifactError
from training.cli import command_parser, positive

PROG = "python -m benchmarks.degraded"
SERIES_ID = "held-out"


def crossing(ratios: list[tuple[int, float]]) -> dict:
    """``ratios``: (values scored, cumulative ratio) after each request, in order. The first
    count at which the ratio exceeds 1.0, and the count after which it stays above 1.0."""
    first = next((n for n, r in ratios if r > 1.0), None)
    stays = None
    for n, r in reversed(ratios):
        if r <= 1.0:
            break
        stays = n
    return {"first_above_1": first, "above_1_from": stays}


def measure(version: Path, windows: np.ndarray, log_path: Path, timeout: float) -> dict:
    """Serve ``version``, send ``windows`` one per request under one series id, read the
    counters after each."""
    system = System(
        "service",
        "service",
        ("service", "--artifacts", str(version), "--address", "127.0.0.1:0",
         "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--workers", "1"),
    )  # fmt: skip
    flat = np.asarray(windows, np.float32).reshape(len(windows), -1).tolist()
    curve: list[tuple[int, float]] = []
    with ServerProcess(system, log_path, env=server_env("cpu")) as server:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            for values in flat:
                stub.Forecast(
                    pb.ForecastRequest(windows=[pb.Window(values=values, series_id=SERIES_ID)]),
                    timeout=timeout,
                )
                samples = server.scrape()
                scored = int(samples.get("forecast_realized_values_total", 0))
                persistence = samples.get("forecast_realized_persistence_abs_error_total", 0.0)
                if scored and persistence > 0:
                    model = samples["forecast_realized_abs_error_total"]
                    curve.append((scored, model / persistence))
    n, ratio = curve[-1]
    return {"values_scored": n, "final_ratio": ratio, **crossing(curve), "curve": sampled(curve)}


def sampled(curve: list[tuple[int, float]], points: int = 40) -> list[tuple[int, float]]:
    """The curve at about ``points`` log-spaced counts, the first and last included."""
    at = np.unique(np.geomspace(1, len(curve), points).astype(int) - 1)
    return [curve[i] for i in at.tolist()]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        PROG,
        "How many scored values realized accuracy needs before a degraded model's absolute "
        "error ratio against persistence crosses 1.0.",
        artifacts_help="the version to degrade (trained on the built-in series)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("results"), help="where degraded.json/.md go"
    )
    parser.add_argument(
        "--shifts",
        default="0.5,1,2",
        help="forecast shifts, in multiples of the validation persistence MAE",
    )
    parser.add_argument(
        "--timeout", type=positive(float), default=30.0, help="per-call deadline, seconds"
    )
    args = parser.parse_args(argv)
    try:
        shifts = [float(s) for s in args.shifts.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--shifts: expected comma-separated numbers, got {args.shifts!r}")
    try:
        version, shape, manifest = model_shape(args.artifacts)
        windows = held_out(manifest)
    except (ArtifactError, WorkloadError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    from training.faults import shift

    persistence_mae = manifest.metrics["val"].persistence_mae
    args.output_dir.mkdir(parents=True, exist_ok=True)
    logs = args.output_dir / "logs"
    logs.mkdir(exist_ok=True)
    results: dict = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": shape.version,
        "window": shape.window,
        "horizon": shape.horizon,
        "windows_sent": len(windows),
        "val_persistence_mae": persistence_mae,
        "val_model_mae": manifest.metrics["val"].mae,
        "models": {},
    }
    with contextlib.ExitStack() as stack:
        copies = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="degraded-")))
        models = {"healthy (the version itself)": (version, 0.0)}
        for factor in shifts:
            by = factor * persistence_mae
            models[f"shifted by {factor:g} x val persistence MAE"] = (
                shift(version, copies, by),
                by,
            )
        for name, (path, by) in models.items():
            print(f"{name}: sending {len(windows)} windows ...", file=sys.stderr, flush=True)
            figures = measure(path, windows, logs / f"degraded-{by:g}.log", args.timeout)
            results["models"][name] = {"shift": by, **figures}
            print(
                f"  {figures['values_scored']} scored, final ratio {figures['final_ratio']:.3f}, "
                f"first above 1.0 after {figures['first_above_1']}, stays above from "
                f"{figures['above_1_from']}",
                file=sys.stderr,
            )
    (args.output_dir / "degraded.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.output_dir / "degraded.md").write_text(text)
    print(text)
    return 0


def markdown(results: dict) -> str:
    lines = [
        f"# Degraded models under realized accuracy ({results['created_at']})",
        "",
        f"Version {results['version']} (window {results['window']}, horizon "
        f"{results['horizon']}); validation MAE {results['val_model_mae']:.1f}, persistence "
        f"MAE {results['val_persistence_mae']:.1f}. {results['windows_sent']} held-out "
        "windows sent in time order, one per request, under one series_id.",
        "",
        "| Model | Shift (target units) | Values scored | Final ratio vs persistence | "
        "First above 1.0 after | Above 1.0 from |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in results["models"].items():
        lines.append(
            f"| {name} | {m['shift']:.1f} | {m['values_scored']} | {m['final_ratio']:.3f} | "
            f"{m['first_above_1'] if m['first_above_1'] is not None else 'never'} | "
            f"{m['above_1_from'] if m['above_1_from'] is not None else 'never'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
