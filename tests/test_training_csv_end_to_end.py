"""CSVs shaped as users have them train with only ``--data`` and ``--target`` (issue 14's
"done when"): a date column, an integer index column, and timestamps with gaps. The index is
not an input, and a healthy replay of the published model raises no drift flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitoring.replay import orders, replay
from training.artifacts import list_versions, load_artifacts
from training.replay import held_out_windows, traffic_for
from training.table import load_csv
from training.train import main

ROWS = 1400


def hourly_demand(rows: int = ROWS, seed: int = 3) -> np.ndarray:
    """A daily cycle with AR(1) noise on a slow trend: learnable beyond persistence and
    seasonal naive."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    noise = np.zeros(rows)
    for i in range(1, rows):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0.0, 1.0)
    return 100.0 + 0.01 * t + 10.0 * np.sin(2 * np.pi * t / 24) + noise


def write(path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def train(path: str, target: str, output) -> int:
    return main(["--data", path, "--target", target, "--output", str(output)])


@pytest.mark.slow
def test_csv_with_a_date_column_trains_with_defaults(tmp_path):
    y = hourly_demand()
    stamps = np.datetime64("2024-01-01T00:00") + np.arange(ROWS) * np.timedelta64(1, "h")
    path = write(
        tmp_path / "d.csv", "date,demand", [f"{s},{v:.3f}" for s, v in zip(stamps, y, strict=True)]
    )

    assert train(path, "demand", tmp_path / "out") == 0

    (version,) = list_versions(tmp_path / "out")
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["feature_names"] == ["demand"]
    assert manifest["data"]["time_column"] == "date"
    assert manifest["data"]["step"] == "PT1H"


@pytest.mark.slow
def test_csv_with_gaps_in_its_timestamps_trains_with_defaults(tmp_path):
    y = hourly_demand()
    stamps = np.datetime64("2024-01-01T00:00") + np.arange(ROWS) * np.timedelta64(1, "h")
    kept = [i for i in range(ROWS) if i % 97 != 50]  # 14 hours missing here and there
    rows = [f"{stamps[i]},{y[i]:.3f}" for i in kept]
    path = write(tmp_path / "g.csv", "timestamp,demand", rows)

    assert train(path, "demand", tmp_path / "out") == 0

    (version,) = list_versions(tmp_path / "out")
    data = json.loads((version / "manifest.json").read_text())["data"]
    assert data["inserted_rows"] == ROWS - len(kept)


@pytest.mark.slow
def test_index_column_is_not_an_input_and_healthy_replay_raises_no_drift(tmp_path):
    y = hourly_demand()
    path = write(tmp_path / "i.csv", "step,demand", [f"{i},{v:.3f}" for i, v in enumerate(y)])

    assert train(path, "demand", tmp_path / "out") == 0

    artifacts = load_artifacts(tmp_path / "out")
    assert artifacts.feature_names == ["demand"]
    assert artifacts.manifest.data is not None and artifacts.manifest.data.time_column == "step"
    raw = held_out_windows(
        load_csv(path, "demand"),
        window=artifacts.window,
        horizon=artifacts.horizon,
        val_fraction=0.15,
        test_fraction=0.15,
    )
    healthy = traffic_for(artifacts, raw)
    spec = artifacts.manifest.monitor_spec()
    assert spec is not None
    for order in orders(len(healthy), 20_000, seed=5).values():
        result = replay(spec, healthy, order)
        assert result.drift_alarms == 0, result
        assert result.collapse_alarms == 0, result
