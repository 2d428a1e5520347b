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
