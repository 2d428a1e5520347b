"""Detector targets, measured on the session's trained model and its held-out series.

Traffic goes through the real model and the float32 wire format (training.replay). The same
measurements on the default model are reported by ``python -m benchmarks.detectors``.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.detectors import DriftDetector
from monitoring.monitor import PredictionMonitor
from monitoring.reference import DetectorSettings, DriftBand, FeatureReference
from monitoring.replay import Traffic, orders, replay, windows_until_flagged
from training.artifacts import load_artifacts
from training.data import synthetic_series
from training.faults import zero_head
from training.replay import drift_scenarios, held_out_windows, traffic_for


@pytest.fixture(scope="module")
def artifacts(trained_version):
    return load_artifacts(trained_version)


@pytest.fixture(scope="module")
def spec(artifacts):
    return artifacts.manifest.monitor_spec()


@pytest.fixture(scope="module")
def raw_windows(artifacts, tiny_training_args):
    steps = int(tiny_training_args[tiny_training_args.index("--synthetic-steps") + 1])
    return held_out_windows(
        synthetic_series(steps),
        window=artifacts.window,
        horizon=artifacts.horizon,
        val_fraction=0.15,
        test_fraction=0.15,
    )


@pytest.fixture(scope="module")
def healthy(artifacts, raw_windows) -> Traffic:
    return traffic_for(artifacts, raw_windows)


@pytest.mark.parametrize("order", ["sequential", "shuffled"])
def test_no_false_alarm_on_100k_windows_of_healthy_replay(artifacts, healthy, order, spec):
    stream = orders(len(healthy), 100_000, seed=3)[order]

    result = replay(spec, healthy, stream)

    assert result.windows == 100_000
    assert result.collapse_alarms == 0, result
    assert result.drift_alarms == 0, result
    threshold = artifacts.manifest.monitoring.collapse.threshold
    assert result.min_responsiveness > threshold


def test_full_collapse_is_flagged_within_64_windows(artifacts, healthy, spec):
    """Output no longer depends on the input: constant raw output, inputs still moving."""
    constant = Traffic(
        healthy.last_rows,
        np.full_like(healthy.raw_output, healthy.raw_output.mean()),
        healthy.forecasts,
    )

    needed = windows_until_flagged(spec, healthy, constant, kind="collapse")

    assert needed is not None and needed <= 64, needed


def test_zeroed_head_model_is_flagged_within_64_windows(
    artifacts, healthy, raw_windows, tmp_path, spec
):
    broken = load_artifacts(zero_head(artifacts.path, tmp_path))
    collapsed_traffic = traffic_for(broken, raw_windows)
    assert np.ptp(collapsed_traffic.raw_output) == pytest.approx(0.0, abs=1e-6)

    needed = windows_until_flagged(spec, healthy, collapsed_traffic, kind="collapse")

    assert needed is not None and needed <= 64, needed


def test_stale_feed_reads_as_collapsed(artifacts, healthy, spec):
    monitor = PredictionMonitor(spec)
    monitor.observe(*healthy.take(np.arange(500) % len(healthy)))
    same = np.full(128, 7)

    monitor.observe(*healthy.take(same))
    monitor.flush()

    assert monitor.collapse.collapsed


def test_calm_stretch_is_not_collapse(artifacts, healthy, raw_windows, spec):
    """Inputs that move less (here: every feature pulled 70% towards its training mean) make
    the predictions move less too; that is not a collapse."""
    mean = artifacts.scaler.mean_

    def calm(windows):
        return mean + 0.3 * (windows - mean)

    calm_traffic = traffic_for(artifacts, raw_windows, calm)
    stream = orders(len(calm_traffic), 20_000)["sequential"]
    result = replay(spec, calm_traffic, stream)

    assert result.collapse_alarms == 0, result


def test_input_scale_drift_is_flagged_within_256_windows(artifacts, healthy, raw_windows, spec):
    needed = {}
    for name, distort in drift_scenarios(artifacts).items():
        faulty = traffic_for(artifacts, raw_windows, distort)
        needed[name] = windows_until_flagged(spec, healthy, faulty, kind="drift")

    late = {name: n for name, n in needed.items() if n is None or n > 256}
    assert not late, needed


def test_psi_waits_for_an_effective_sample_of_500_windows(artifacts, healthy, spec):
    monitor = PredictionMonitor(spec)
    monitor.observe(*healthy.take(np.arange(200) % len(healthy)))
    monitor.flush()
    assert monitor.drift.hist.count == 200
    assert np.isnan(monitor.drift.psi).all()

    monitor.observe(*healthy.take(np.arange(200, 2000) % len(healthy)))
    monitor.flush()

    assert monitor.drift.hist.effective_samples >= 500
    assert np.isfinite(monitor.drift.psi).all()
    assert artifacts.manifest.monitoring.settings.psi_min_samples >= 500


def test_calibration_is_stored_in_the_manifest(artifacts):
    section = artifacts.manifest.monitoring
    collapse = section.collapse
    assert 0 < collapse.threshold <= 0.1
    assert min(collapse.healthy_min_responsiveness.values()) > collapse.threshold
    assert set(section.drift) == set(artifacts.feature_names)
    for band in section.drift.values():
        assert band.mean_z[0] <= band.mean_z[1]
        assert band.std_ratio[0] <= band.std_ratio[1]


def test_feature_that_stood_still_in_calibration_is_not_drifted_by_zero_spread():
    """Healthy replay saw a flag feature sit still (std ratio at rounding level): a span where
    it sits still again is not drift, however the rounding of the EW variance falls."""
    reference = {
        "flag": FeatureReference(
            mean=0.0,
            std=1.0,
            min=-1.0,
            max=1.0,
            deciles=(0.0,),
            bin_edges=(0.0,),
            bin_fractions=(0.5, 0.5),
        )
    }
    calibration = {
        "flag": DriftBand(mean_z=(-1.0, 1.0), std_ratio=(1e-15, 1.2), psi=0.1, out_of_range=0.0)
    }
    detector = DriftDetector(
        reference=reference,
        calibration=calibration,
        settings=DetectorSettings(),
    )

    detector.update(np.full((200, 1), 1.0))

    assert detector.std_ratio[0] < 1e-15  # rounding level, below the calibrated minimum
    assert not detector.drifted.any()
    detector.update(np.full((200, 1), 25.0))  # a real jump still counts
    assert detector.drifted.all()
