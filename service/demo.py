"""``make demo``: watch the detectors work on a real service in about two minutes.

1. healthy traffic (held-out windows of the built-in series) -> nothing flagged;
2. the same windows scaled x10 (a unit change upstream) -> input drift flagged;
3. a collapsed artifact (output head zeroed, re-sealed) serving healthy traffic -> collapse.

Each phase starts a real ``python -m service`` process, sends traffic with the project's
client, and prints the key metrics scraped from its ``/metrics`` endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from service import announce
from service.client import ForecastClient
from training.artifacts import ArtifactError, load_artifacts
from training.cli import command_parser
from training.data import synthetic_series
from training.faults import zero_head
from training.replay import held_out_windows

KEY_METRICS = (
    "forecast_windows_total",
    "forecast_prediction_variance_ratio",
    "forecast_prediction_responsiveness_ratio",
    "forecast_collapse_threshold_ratio",
    "forecast_output_collapsed",
    "forecast_collapse_events_total",
    "forecast_input_mean_zscore",
    "forecast_input_std_ratio",
    "forecast_input_out_of_range_ratio",
    "forecast_input_drifted",
)


class ServiceProcess:
    """``python -m service`` on loopback with OS-chosen ports, read back from its log."""

    def __init__(self, artifacts: Path):
        self._log = tempfile.NamedTemporaryFile("w+", prefix="demo-service-", suffix=".log")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--artifacts",
                str(artifacts),
                "--address",
                "127.0.0.1:0",
                "--metrics-port",
                "0",
                "--metrics-address",
                "127.0.0.1",
                "--grace-seconds",
                "5",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.grpc_port = self.metrics_port = 0

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = Path(self._log.name).read_text()
            grpc_port, metrics_port = announce.grpc_port(text), announce.metrics_port(text)
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{text[-2000:]}")
            if grpc_port and metrics_port:
                self.grpc_port, self.metrics_port = grpc_port, metrics_port
                with ForecastClient(f"127.0.0.1:{self.grpc_port}") as client:
                    try:
                        if client.health() == "SERVING":
                            return
                    except Exception:  # noqa: BLE001 - still starting
                        pass
            time.sleep(0.3)
        raise TimeoutError("service did not become SERVING")

    def scrape(self) -> dict[tuple[str, str], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            text = resp.read().decode()
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, sample.labels.get("feature", ""))] = sample.value
        return values

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def _print_metrics(title: str, values: dict[tuple[str, str], float], features: list[str]) -> None:
    print(f"\n== {title}")
    for name in KEY_METRICS:
        if (name, "") in values:
            print(f"  {name:<45} {values[(name, '')]:.3f}")
        else:
            cells = "  ".join(f"{f}={values.get((name, f), float('nan')):.2f}" for f in features)
            print(f"  {name:<45} {cells}")


def _phase(
    title: str,
    artifacts: Path,
    windows: np.ndarray,
    features: list[str],
    distort: Callable[[np.ndarray], np.ndarray] | None = None,
    batch: int = 16,
) -> dict[tuple[str, str], float]:
    print(f"\n-- {title}: starting the service on {artifacts} ...", flush=True)
    service = ServiceProcess(artifacts)
    try:
        service.wait_ready()
        sent = windows if distort is None else distort(windows.copy())
        with ForecastClient(f"127.0.0.1:{service.grpc_port}") as client:
            for lo in range(0, len(sent), batch):
                client.forecast(sent[lo : lo + batch])
        time.sleep(0.5)  # batch metrics are recorded just after each response is sent
        values = service.scrape()
        _print_metrics(f"{title}: {len(sent)} windows sent", values, features)
        return values
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "python -m service.demo",
        __doc__.splitlines()[0],
        artifacts_help="trained artifacts (base or version directory)",
    )
    parser.add_argument("--windows", type=int, default=600, help="windows sent per phase")
    args = parser.parse_args(argv)
    try:
        artifacts = load_artifacts(args.artifacts)
    except ArtifactError as exc:
        print(f"python -m service.demo: error: {exc} (run make train first)", file=sys.stderr)
        return 2
    features = artifacts.feature_names
    raw = held_out_windows(
        synthetic_series(6000),
        window=artifacts.window,
        horizon=artifacts.horizon,
        val_fraction=0.15,
        test_fraction=0.15,
    )
    windows = raw[: args.windows]

    healthy = _phase("1/3 healthy traffic", artifacts.path, windows, features)
    scaled = _phase(
        "2/3 inputs scaled x10", artifacts.path, windows, features, distort=lambda w: w * 10.0
    )
    with tempfile.TemporaryDirectory() as scratch:
        broken = zero_head(artifacts.path, Path(scratch))
        collapsed = _phase("3/3 collapsed model (zeroed output head)", broken, windows, features)

    drifted = [f for f in features if scaled.get(("forecast_input_drifted", f)) == 1]
    print("\nSummary:")
    print(
        f"  healthy:   collapsed={healthy[('forecast_output_collapsed', '')]:.0f}, drifted "
        f"features={[f for f in features if healthy.get(('forecast_input_drifted', f)) == 1]}"
    )
    print(f"  x10 input: drifted features={drifted}")
    print(
        f"  collapsed: collapsed={collapsed[('forecast_output_collapsed', '')]:.0f}, variance "
        f"ratio={collapsed[('forecast_prediction_variance_ratio', '')]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
