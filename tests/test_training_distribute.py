"""--distribute mirrored on the CPU, split into two logical devices (a fresh process, because
logical devices must be configured before TensorFlow initialises)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from training.artifacts import list_versions, load_artifacts
from training.predict import predict_windows


@pytest.mark.slow
def test_mirrored_training_on_two_cpu_devices_publishes_loadable_artifacts(
    tmp_path, tiny_training_args
):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            *tiny_training_args,
            "--epochs",
            "3",
            "--distribute",
            "mirrored",
            "--cpu-devices",
            "2",
            "--allow-collapsed",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "distribution: mirrored with 2 replica(s)" in result.stderr
    (version,) = list_versions(tmp_path)
    artifacts = load_artifacts(version)
    windows = np.random.default_rng(0).normal(
        20_000, 3_000, (4, artifacts.window, len(artifacts.feature_names))
    )
    forecasts, _ = predict_windows(artifacts.model, artifacts.transform(), windows)
    assert forecasts.shape == (4, artifacts.horizon)
    assert np.isfinite(forecasts).all()


def test_multiworker_without_tf_config_is_a_usage_error(tmp_path, tiny_training_args):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            *tiny_training_args,
            "--distribute",
            "multiworker",
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in __import__("os").environ.items() if k != "TF_CONFIG"},
    )

    assert result.returncode == 2
    assert "TF_CONFIG" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def _free_ports(n: int) -> list[int]:
    """TensorFlow's worker servers need their addresses up front (TF_CONFIG), so the ports
    are picked here; a clash makes the run fail and the test retries with new ports."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_two_multiworker_processes_train_together_and_only_the_chief_publishes(
    tmp_path, tiny_training_args
):
    import json
    import os

    for _attempt in range(3):
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "training.train",
                    *tiny_training_args,
                    "--epochs",
                    "3",
                    "--distribute",
                    "multiworker",
                    "--allow-collapsed",
                    "--output",
                    str(tmp_path),
                ],
                env={
                    **os.environ,
                    "TF_CONFIG": json.dumps(
                        {"cluster": cluster, "task": {"type": "worker", "index": i}}
                    ),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [w.communicate(timeout=300) for w in workers]
        if all(w.returncode == 0 for w in workers):
            break
        if not any("Address already in use" in err for _, err in outputs):
            pytest.fail("\n".join(err[-2000:] for _, err in outputs))

    assert [w.returncode for w in workers] == [0, 0]
    (version,) = list_versions(tmp_path)  # exactly one version: the chief's
    assert outputs[0][0].strip().splitlines()[-1].startswith(f"published {version}")
    assert "the chief publishes" in outputs[1][0]
    epoch_lines = [[ln for ln in err.splitlines() if ln.startswith("epoch")] for _, err in outputs]
    assert epoch_lines[0] and [ln.split("  lr")[0] for ln in epoch_lines[0]] == [
        ln.split("  lr")[0] for ln in epoch_lines[1]
    ]  # identical losses: the replicas really trained in sync
    load_artifacts(version)
