"""GetModelInfo carries the baselines the served version was compared with at training."""

from __future__ import annotations

import pytest

from service.api import pb
from service.forecaster import Forecaster
from service.servicer import model_info
from training.artifacts import load_artifacts

TIMEOUT = 10.0


async def test_get_model_info_carries_every_baseline_score(stub, artifacts):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    baselines = artifacts.manifest.baselines
    assert baselines is not None
    assert [(b.name, b.period, b.statistical) for b in info.baselines] == [
        (s.name, s.period or 0, s.statistical) for s in baselines.scores
    ]
    assert [b.val_mae for b in info.baselines] == [s.val_mae for s in baselines.scores]
    assert [b.test_mae for b in info.baselines] == [s.test_mae for s in baselines.scores]
    assert list(info.seasonal_periods) == list(baselines.periods) == [24, 168]
    assert info.one_step_validation_mae == baselines.model_val_mae
    assert info.one_step_test_mae == baselines.model_test_mae


async def test_get_model_info_names_the_best_statistical_baseline(stub, artifacts):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    statistical = [b for b in info.baselines if b.statistical]
    best = min(statistical, key=lambda b: b.val_mae)
    assert info.best_statistical_baseline == best.name
    assert info.best_statistical_baseline_beats_model == (
        best.val_mae < info.one_step_validation_mae
    )


@pytest.mark.slow
def test_model_info_of_a_version_without_baselines_leaves_them_empty(format1_version):
    forecaster = Forecaster(load_artifacts(format1_version), buckets=(1,), jit_compile=False)

    info = model_info(forecaster, max_windows_per_request=8, device="CPU")

    assert forecaster.artifacts.manifest.baselines is None
    assert list(info.baselines) == []
    assert info.best_statistical_baseline == ""
    assert info.best_statistical_baseline_beats_model is False
    assert list(info.seasonal_periods) == []
