"""Prediction intervals (training/intervals.py): the finite-sample conformal quantile and its
coverage guarantee on exchangeable data, nesting and lo <= value <= hi at any level, the local
scale, the manifest's ``intervals`` section with and without it, and a trained version's
report.json and manifest carrying test coverage and width at 80 % and 95 %."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.artifacts import load_artifacts
from training.config import TrainConfig
from training.intervals import (
    REPORTED_LEVELS,
    Conformal,
    IntervalCalibration,
    IntervalScore,
    conformal_rank,
    fit_calibration,
    local_scale,
    score,
)
from training.manifest import ArtifactError, Manifest
from training.predict import predict_windows
from training.train import _load_and_prepare, build_parser
from training.transform import (
    WindowTransform,
    fit_scaler,
    future_targets,
    sliding_windows,
    window_ends,
)

WINDOW = 8


def make_transform(*, anchor_period: int = 0, horizon: int = 1) -> WindowTransform:
    """A real transform over one feature: windows of WINDOW rows (steps WINDOW - 4 and a lag
    of 4 with an anchor period, else all of them)."""
    train = np.random.default_rng(0).normal(size=(400, 1)).cumsum(axis=0)
    lags = (4,) if anchor_period else ()
    steps = WINDOW - 4 if anchor_period else WINDOW
    return WindowTransform.fit(
        fit_scaler(train),
        train,
        target_index=0,
        steps=steps,
        horizon=horizon,
        lags=lags,
        anchor_period=anchor_period,
    )


def exchangeable(rng: np.random.Generator, n: int, horizon: int = 1):
    """``n`` i.i.d. (window, forecast, outcome) triples whose error grows with the window's
    volatility, heavy-tailed: forecasts are the last value, outcomes that plus t(3) noise."""
    volatility = rng.lognormal(0.0, 0.7, size=n)
    steps = rng.normal(size=(n, WINDOW)) * volatility[:, None]
    windows = (100 + steps.cumsum(axis=1))[:, :, None]
    forecasts = np.repeat(windows[:, -1, :], horizon, axis=1)
    outcomes = forecasts + rng.standard_t(3, size=(n, horizon)) * volatility[:, None]
    return windows, forecasts, outcomes


# ---- the conformal quantile ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "level", "rank"),
    [
        (19, 95.0, 19),  # ceil(20 * 0.95) = 19: the largest score
        (19, 95.01, 20),  # past n: no finite bound
        (99, 80.0, 80),
        (999, 80.0, 800),  # (n + 1) * level is an integer: not pushed up by rounding
        (1000, 80.0, 801),
        (1000, 0.001, 1),
        (4, 50.0, 3),
    ],
)
def test_conformal_rank_is_the_finite_sample_quantile(n, level, rank):
    assert conformal_rank(n, level) == rank
    assert rank == max(1, math.ceil(round((n + 1) * level / 100, 9)))


def test_quantile_past_the_last_score_is_infinite():
    calibration = IntervalCalibration(method="absolute", scores=((1.0, 2.0, 3.0, 4.0),))
    conformal = Conformal(calibration, make_transform())

    quantiles = conformal.quantiles([50.0, 80.0, 81.0, 99.9])

    # n = 4: ranks ceil(5 * level): 3, 4, 5 (past n), 5.
    np.testing.assert_array_equal(quantiles[:, 0], [3.0, 4.0, np.inf, np.inf])


@pytest.mark.parametrize("method", ["absolute", "normalized"])
@pytest.mark.parametrize("level", [80.0, 95.0, 83.3])
def test_coverage_on_exchangeable_data_is_the_conformal_guarantee(method, level):
    """Split conformal on n = 99 exchangeable windows covers a new one with probability exactly
    ceil((n + 1) level) / (n + 1) for continuous scores: at least the level, at most 1/(n + 1)
    above it. Averaged over 300 calibrations of 200 new windows each (standard error ~0.003)."""
    rng = np.random.default_rng(int(level * 10) + len(method))
    transform = make_transform()
    n, trials, fresh = 99, 300, 200
    expected = conformal_rank(n, level) / (n + 1)
    covered = []
    for _ in range(trials):
        windows, forecasts, outcomes = exchangeable(rng, n + fresh)
        calibration = fit_calibration(
            method,
            forecasts=forecasts[:n],
            truth=outcomes[:n],
            raw_windows=windows[:n],
            train_windows=windows[:n],
            transform=transform,
        )
        (result,) = score(
            Conformal(calibration, transform),
            forecasts=forecasts[n:],
            truth=outcomes[n:],
            raw_windows=windows[n:],
            levels=[level],
        )
        covered.append(result.coverage)

    assert level / 100 <= expected <= level / 100 + 1 / (n + 1)
    assert np.mean(covered) == pytest.approx(expected, abs=0.012)


def test_normalized_intervals_cover_calm_and_volatile_windows_alike():
    """Where the error grows with the window's volatility, absolute intervals (one width) cover
    calm windows too often and volatile ones too rarely; normalized intervals follow the
    volatility and cover both near the level. (Their mean width is not smaller: spending the
    same coverage evenly costs width on the volatile windows, which is what was measured on
    the real series as well.)"""
    rng = np.random.default_rng(3)
    transform = make_transform()
    windows, forecasts, outcomes = exchangeable(rng, 8000)
    cal, new = slice(0, 4000), slice(4000, None)
    volatility = local_scale(windows[new], transform)
    calm = volatility < np.quantile(volatility, 0.25)
    volatile = volatility > np.quantile(volatility, 0.75)
    coverage, widths = {}, {}
    for method in ("absolute", "normalized"):
        calibration = fit_calibration(
            method,
            forecasts=forecasts[cal],
            truth=outcomes[cal],
            raw_windows=windows[cal],
            train_windows=windows[cal],
            transform=transform,
        )
        bounds = Conformal(calibration, transform).bounds(forecasts[new], windows[new], [80.0])
        lo, hi, y = bounds.lo[:, 0, 0], bounds.hi[:, 0, 0], outcomes[new][:, 0]
        inside = (lo <= y) & (y <= hi)
        assert inside.mean() == pytest.approx(0.8, abs=0.02)
        coverage[method] = {"calm": inside[calm].mean(), "volatile": inside[volatile].mean()}
        widths[method] = hi - lo

    assert coverage["absolute"]["calm"] > 0.95
    assert coverage["absolute"]["volatile"] < 0.6
    assert coverage["normalized"]["calm"] == pytest.approx(0.8, abs=0.05)
    assert coverage["normalized"]["volatile"] == pytest.approx(0.8, abs=0.05)
    assert np.ptp(widths["absolute"]) == pytest.approx(0.0, abs=1e-9)
    assert widths["normalized"][calm].mean() < 0.5 * widths["absolute"][calm].mean()
    assert np.corrcoef(volatility, widths["normalized"])[0, 1] > 0.99


# ---- nesting and order, at any level ---------------------------------------------------------

levels_strategy = st.lists(
    st.floats(min_value=0.0, max_value=100.0, exclude_min=True, exclude_max=True, width=32),
    min_size=1,
    max_size=8,
    unique=True,
)


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(
        st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=40),
        min_size=2,
        max_size=2,
    ),
    levels=levels_strategy,
    method=st.sampled_from(["absolute", "normalized"]),
    seed=st.integers(0, 2**16),
)
def test_intervals_nest_and_contain_the_forecast_at_any_level(scores, levels, method, seed):
    n = min(len(s) for s in scores)
    calibration = IntervalCalibration(
        method=method, scores=tuple(tuple(sorted(s[:n])) for s in scores), scale_floor=0.5
    )
    transform = make_transform(horizon=2)
    rng = np.random.default_rng(seed)
    windows = rng.normal(0, 10, size=(5, WINDOW, 1)).cumsum(axis=1)
    forecasts = rng.normal(0, 1e4, size=(5, 2))

    bounds = Conformal(calibration, transform).bounds(forecasts, windows, levels)

    assert bounds.levels == tuple(levels)
    assert bounds.lo.shape == bounds.hi.shape == (5, len(levels), 2)
    assert np.all(bounds.lo <= forecasts[:, None, :])
    assert np.all(forecasts[:, None, :] <= bounds.hi)
    order = np.argsort(levels)  # wider levels contain narrower ones (bounds may be infinite)
    lo, hi = bounds.lo[:, order, :], bounds.hi[:, order, :]
    assert np.all(lo[:, 1:, :] <= lo[:, :-1, :])
    assert np.all(hi[:, 1:, :] >= hi[:, :-1, :])
    # As the service sends them (float32), the order still holds.
    lo32, hi32, f32 = (a.astype(np.float32) for a in (bounds.lo, bounds.hi, forecasts))
    assert np.all(lo32 <= f32[:, None, :]) and np.all(f32[:, None, :] <= hi32)


# ---- the local scale -------------------------------------------------------------------------


def test_local_scale_is_the_anchor_error_over_the_rows_the_lstm_sees():
    y = np.array([0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 21.0, 28.0])
    windows = y[None, :, None]

    plain = local_scale(windows, make_transform())
    anchored = local_scale(windows, make_transform(anchor_period=4))

    # Persistence over all 8 rows: the mean absolute one-step change, |diff| = 1..7.
    assert plain == pytest.approx([4.0])
    # Steps 4 (rows 4..7), anchored at period 4: y[t] - y[t-1] - (y[t-4] - y[t-5]) for the
    # rows 5..7: (6 - 2), (7 - 3), (7 - 3) = 4 each.
    assert anchored == pytest.approx([4.0])


def test_normalized_scale_is_floored_so_a_flat_window_still_gets_an_interval():
    transform = make_transform()
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, WINDOW, 1)).cumsum(axis=1)
    windows, forecasts, outcomes = exchangeable(rng, 50)
    calibration = fit_calibration(
        "normalized",
        forecasts=forecasts,
        truth=outcomes,
        raw_windows=windows,
        train_windows=train,
        transform=transform,
    )
    flat = np.full((1, WINDOW, 1), 7.0)

    bounds = Conformal(calibration, transform).bounds(np.array([[7.0]]), flat, [80.0])

    assert calibration.scale_floor == pytest.approx(0.1 * np.median(local_scale(train, transform)))
    assert bounds.hi[0, 0, 0] - bounds.lo[0, 0, 0] > 0


# ---- the manifest ----------------------------------------------------------------------------


def test_manifest_round_trips_with_intervals(trained_version):
    manifest = Manifest.load(trained_version)

    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))

    assert manifest.intervals is not None
    assert again == manifest
    assert isinstance(again.intervals, IntervalCalibration)
    assert again.intervals.test == manifest.intervals.test


def test_manifest_without_intervals_loads_and_dumps_without_them(trained_version):
    body = Manifest.load(trained_version).to_dict()
    del body["intervals"]

    manifest = Manifest.from_dict(body)

    assert manifest.intervals is None
    assert "intervals" not in manifest.to_dict()
    assert manifest.format_version == 2


def test_format1_version_has_no_intervals(format1_version):
    assert Manifest.load(format1_version).intervals is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(method="quantile"), "method 'quantile'"),
        (lambda s: s.update(scores=[]), "0 score lists for horizon 1"),
        (lambda s: s.update(scores=[[]]), "empty or of different lengths"),
        (lambda s: s.update(scores=[[2.0, 1.0]]), "non-negative and ascending"),
        (lambda s: s.update(scores=[[-1.0, 1.0]]), "non-negative and ascending"),
        (lambda s: s.update(scale_floor=0.0), "scale_floor 0.0"),
    ],
)
def test_manifest_refuses_an_unusable_intervals_section(trained_version, change, message):
    body = Manifest.load(trained_version).to_dict()
    change(body["intervals"])

    with pytest.raises(ArtifactError, match="invalid manifest at intervals: ") as excinfo:
        Manifest.from_dict(body, source="v/manifest.json")

    assert message in str(excinfo.value)
    assert str(excinfo.value).startswith("v/manifest.json: ")


# ---- a trained version -----------------------------------------------------------------------


def test_trained_version_reports_test_coverage_and_width_at_80_and_95(trained_version):
    manifest = json.loads((trained_version / "manifest.json").read_text())
    report = json.loads((trained_version / "report.json").read_text())

    for section in (manifest["intervals"], report["intervals"]):
        assert [s["level"] for s in section["test"]] == [80.0, 95.0]
        assert set(section["methods"]) == {"absolute", "normalized"}
        assert section["test"] == section["methods"][section["method"]]
        for s in section["test"]:
            assert 0.5 <= s["coverage"] <= 1.0
            assert s["mean_width"] > 0
        widths = [s["mean_width"] for s in section["test"]]
        assert widths[0] < widths[1]
    assert manifest["intervals"]["method"] == "absolute"  # the default
    windows = manifest["training"]["windows"]["val"]
    assert [len(step) for step in manifest["intervals"]["scores"]] == [windows]


def test_trained_version_intervals_match_the_report_on_the_test_split(trained_version):
    """The figures in the manifest are those of the intervals served: recompute them."""
    artifacts = load_artifacts(trained_version)
    manifest = artifacts.manifest
    transform = artifacts.transform()
    assert manifest.intervals is not None
    conformal = Conformal(manifest.intervals, transform)
    # Rebuild the test windows of the tiny training run (the conftest's configuration).
    args = build_parser().parse_args(
        list(manifest.training.argv[: manifest.training.argv.index("--output")])
    )
    prepared = _load_and_prepare(TrainConfig(**vars(args)))
    values = prepared.splits["test"]
    ends = window_ends(len(values), transform.window, transform.horizon)
    windows = sliding_windows(values, transform.window, ends)
    forecasts, _ = predict_windows(artifacts.model, transform, windows)
    truth = future_targets(values[:, transform.target_index], transform.horizon, ends)

    recomputed = score(conformal, forecasts=forecasts, truth=truth, raw_windows=windows)

    for mine, recorded in zip(recomputed, manifest.intervals.test, strict=True):
        assert dataclasses.asdict(mine) == pytest.approx(dataclasses.asdict(recorded), rel=1e-6)
    assert tuple(s.level for s in recomputed) == REPORTED_LEVELS
    assert all(isinstance(s, IntervalScore) for s in recomputed)
