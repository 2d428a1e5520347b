"""Baselines scored on the model's points (training/baselines.py): hand-computed values, causality
of every baseline, the statsforecast properties the rolling forecasts rely on, and the budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import TypeAdapter

from training.baselines import (
    STATISTICAL,
    Baselines,
    BaselineScore,
    ets_one_step_bounds,
    score_baselines,
)
from training.data import synthetic_series
from training.seasons import detect_periods


def split_points(n: int, window: int = 24) -> tuple[int, dict[str, np.ndarray]]:
    """``train_end`` and the model's one-step points of the default 70/15/15 split."""
    n_val = n_test = round(0.15 * n)
    train_end = n - n_val - n_test
    return train_end, {
        "val": np.arange(train_end + window, train_end + n_val),
        "test": np.arange(train_end + n_val + window, n),
    }


def imputed(values: np.ndarray) -> np.ndarray:
    """Missing values carried forward (the synthetic series has a few)."""
    index = np.where(np.isnan(values), 0, np.arange(len(values)))
    np.maximum.accumulate(index, out=index)
    return values[index]


@pytest.fixture(scope="module")
def hourly() -> np.ndarray:
    """1200 hours of the synthetic load: daily and weekly seasons, a trend, AR noise."""
    return imputed(synthetic_series(1200).values[:, 0])


def score_map(baselines: Baselines) -> dict[str, BaselineScore]:
    return {s.label: s for s in baselines.scores}


# ---- the simple baselines, by hand -----------------------------------------------------------


def test_simple_baselines_score_hand_computed_errors():
    """On y = t^2: persistence misses by 2t-1, seasonal naive at 4 by 8t-16, and persistence
    plus the seasonal change by exactly 8."""
    y = np.arange(30, dtype=np.float64) ** 2
    points = {"val": np.array([12, 13]), "test": np.array([20])}

    baselines = score_baselines(y, 12, points, (4,), budget_seconds=0)

    scores = score_map(baselines)
    assert scores["persistence"].val_mae == pytest.approx((23 + 25) / 2)
    assert scores["persistence"].test_mae == pytest.approx(39)
    assert scores["seasonal_naive(4)"].val_mae == pytest.approx((80 + 88) / 2)
    assert scores["seasonal_naive(4)"].test_mae == pytest.approx(144)
    assert scores["persistence_seasonal_change(4)"].val_mae == pytest.approx(8)
    assert scores["persistence_seasonal_change(4)"].test_mae == pytest.approx(8)
    assert baselines.periods == (4,)
    assert baselines.best("val").label == "persistence_seasonal_change(4)"
    assert baselines.best_seasonal_naive("val") is scores["seasonal_naive(4)"]
    assert baselines.best_statistical("val") is None


def test_persistence_is_the_models_persistence_on_the_same_points(hourly):
    """With horizon 1 the baseline equals the persistence MAE the guard computes per window."""
    train_end, points = split_points(len(hourly))

    baselines = score_baselines(hourly, train_end, points, (), budget_seconds=0)

    for split, rows in points.items():
        expected = np.mean(np.abs(hourly[rows] - hourly[rows - 1]))
        assert baselines.persistence.mae(split) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ({"val": np.array([5]), "test": np.array([20])}, "val points must lie in"),
        ({"val": np.array([12]), "test": np.array([30])}, "test points must lie in"),
        ({"val": np.array([], dtype=int), "test": np.array([20])}, "no val points"),
    ],
)
def test_points_outside_validation_and_test_are_refused(points, message):
    y = np.arange(30, dtype=np.float64)

    with pytest.raises(ValueError, match=message):
        score_baselines(y, 12, points, (), budget_seconds=0)


def test_periods_without_two_cycles_in_training_are_refused():
    y = np.arange(30, dtype=np.float64)

    with pytest.raises(ValueError, match="two cycles"):
        score_baselines(y, 12, {"val": np.array([12]), "test": np.array([20])}, (7,))


def test_non_finite_target_is_refused():
    y = np.arange(30, dtype=np.float64)
    y[3] = np.nan

    with pytest.raises(ValueError, match="finite"):
        score_baselines(y, 12, {"val": np.array([12]), "test": np.array([20])}, ())


# ---- causality ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trended() -> np.ndarray:
    """600 "months": a trend, a yearly cycle and a random walk."""
    rng = np.random.default_rng(0)
    t = np.arange(600)
    return 50 + 0.05 * t + 5 * np.sin(2 * np.pi * t / 12) + np.cumsum(rng.normal(0, 0.5, 600))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("series", "periods", "statistical"),
    [
        ("hourly", (24, 168), {"AutoETS", "AutoTheta", "MSTL"}),  # ETS seasonal; MSTL
        ("hourly", (48,), {"AutoETS", "AutoTheta"}),  # ETS past its 24 seasons: deseasonalised
        ("trended", (12,), {"AutoETS", "AutoTheta", "AutoARIMA"}),  # seasonal ARIMA
        ("trended", (), {"AutoETS", "AutoTheta", "AutoARIMA"}),  # non-seasonal ARIMA
    ],
)
def test_no_baseline_looks_past_the_point_it_forecasts(request, series, periods, statistical):
    """The validation point's error is the same whatever the target does after it: every
    forecast for row i uses target[:i] only."""
    y = request.getfixturevalue(series)
    train_end, _ = split_points(len(y))
    i = train_end + 30
    points = {"val": np.array([i]), "test": np.array([len(y) - 1])}
    changed = y.copy()
    changed[i + 1 :] += np.random.default_rng(0).normal(0, 10 * y.std(), len(y) - i - 1)

    before = score_baselines(y, train_end, points, periods)
    after = score_baselines(changed, train_end, points, periods)

    assert {s.name for s in before.scores if s.statistical} == statistical
    assert {s.label: s.val_mae for s in after.scores} == pytest.approx(
        {s.label: s.val_mae for s in before.scores}, rel=1e-9
    )
    assert {s.label: s.test_mae for s in after.scores} != {
        s.label: s.test_mae for s in before.scores
    }
    # AutoETS's intervals at the validation point do not look ahead either.
    ets_before, ets_after = (
        next(s for s in b.scores if s.name == "AutoETS") for b in (before, after)
    )
    assert len(ets_before.val_intervals) == 2
    for mine, theirs in zip(ets_before.val_intervals, ets_after.val_intervals, strict=True):
        assert (mine.level, mine.coverage) == (theirs.level, theirs.coverage)
        assert mine.mean_width == pytest.approx(theirs.mean_width, rel=1e-9)


# ---- what the rolling forecasts rely on in statsforecast ----------------------------------------


def test_ets_forward_fitted_is_the_simple_exponential_smoothing_filter(trended):
    """ETS(A,N,N) with fixed parameters: the forecast of y[i] is the level after y[:i],
    l_t = alpha * y_t + (1 - alpha) * l_{t-1}, from the fitted initial level."""
    from statsforecast.models import AutoETS

    model = AutoETS(model="ANN").fit(trended[:400])
    alpha, level = model.model_["par"][0], model.model_["par"][4]

    fitted = model.forward(y=trended, h=1, fitted=True)["fitted"]

    manual = np.empty(len(trended))
    for t, value in enumerate(trended):
        manual[t] = level
        level = alpha * value + (1 - alpha) * level
    np.testing.assert_allclose(fitted, manual, rtol=1e-9)


@pytest.mark.parametrize("model", ["AutoETS", "AutoARIMA"])
@pytest.mark.parametrize("season", [1, 12])
def test_forward_fitted_is_the_forecast_from_each_origin(trended, model, season):
    """forward(y)["fitted"][i] equals the one-step forecast from y[:i] with the same fixed
    parameters: one filtering pass gives every rolling forecast."""
    import statsforecast.models

    fitted_model = getattr(statsforecast.models, model)(season_length=season).fit(trended[:400])

    fitted = fitted_model.forward(y=trended, h=1, fitted=True)["fitted"]

    for i in (401, 450, 599):
        from_origin = fitted_model.forward(y=trended[:i], h=1)["mean"][0]
        assert fitted[i] == pytest.approx(from_origin, rel=1e-6)


@pytest.mark.parametrize(
    ("spec", "season"),
    [("ANN", 1), ("AAN", 1), ("MNN", 1), ("MAN", 1), ("AAA", 12), ("MNM", 12), ("ZZZ", 12)],
)
def test_ets_one_step_bounds_are_statsforecasts_intervals_from_each_origin(trended, spec, season):
    """Row i of the one-pass bounds equals forward(y[:i], h=1, level=[80, 95]): statsforecast's
    own one-step intervals from that origin, with the parameters fitted on the first 400 rows
    and the error variance of the rows before i (additive and multiplicative errors)."""
    from statsforecast.models import AutoETS

    model = AutoETS(model=spec, season_length=season).fit(trended[:400])
    one_step = model.forward(y=trended, h=1, fitted=True)["fitted"]

    lo, hi = ets_one_step_bounds(model.model_, trended, one_step, (80.0, 95.0))

    for i in (401, 450, 599):
        origin = model.forward(y=trended[:i], h=1, level=[80, 95])
        assert lo[i] == pytest.approx([origin["lo-80"][0], origin["lo-95"][0]], rel=1e-9)
        assert hi[i] == pytest.approx([origin["hi-80"][0], origin["hi-95"][0]], rel=1e-9)
        assert lo[i, 1] < lo[i, 0] < one_step[i] < hi[i, 0] < hi[i, 1]


def test_autoets_intervals_are_scored_on_the_models_points(hourly):
    train_end, points = split_points(len(hourly))

    baselines = score_baselines(hourly, train_end, points, (24,))

    ets = next(s for s in baselines.scores if s.name == "AutoETS")
    assert [s.level for s in ets.test_intervals] == [80.0, 95.0]
    for split in (ets.val_intervals, ets.test_intervals):
        assert all(0.0 <= s.coverage <= 1.0 and s.mean_width > 0 for s in split)
        assert split[0].mean_width < split[1].mean_width
        assert split[0].coverage <= split[1].coverage
    assert all(s.test_intervals == () for s in baselines.scores if s.name != "AutoETS")


@pytest.mark.parametrize(("standard", "dynamic"), [("STM", "DSTM"), ("OTM", "DOTM")])
def test_dynamic_theta_gives_the_standard_models_forecasts_from_each_origin(
    trended, standard, dynamic
):
    """The standard Theta models' in-sample values see the future (their trend line is fit to
    all the data); their forecasts from each origin are the dynamic models' one-step values
    with the same parameters, which is what the AutoTheta baseline runs forward."""
    import copy

    from statsforecast.models import AutoTheta

    model = AutoTheta(model=standard).fit(trended[:400])
    rolling = copy.copy(model)
    rolling.model_ = {**model.model_, "modeltype": dynamic}

    fitted = rolling.forward(y=trended, h=1, fitted=True)["fitted"]
    leaky = model.forward(y=trended, h=1, fitted=True)["fitted"]

    for i in (401, 450, 599):
        assert fitted[i] == pytest.approx(model.forward(y=trended[:i], h=1)["mean"][0])
    assert not np.allclose(leaky[401:450], fitted[401:450])


# ---- the statistical models, the budget and what is skipped -------------------------------------


def test_zero_budget_skips_every_statistical_model_saying_why(hourly):
    train_end, points = split_points(len(hourly))

    baselines = score_baselines(hourly, train_end, points, (24, 168), budget_seconds=0)

    assert not any(s.statistical for s in baselines.scores)
    assert set(baselines.skipped) == set(STATISTICAL)
    for name in ("AutoETS", "AutoTheta", "MSTL"):
        assert "budget" in baselines.skipped[name]
    assert "season 24 > 12" in baselines.skipped["AutoARIMA"]
    assert len(baselines.scores) == 5  # persistence, and two per period


@pytest.mark.slow
def test_statistical_models_run_or_say_why_on_a_tiny_series():
    """Too few rows for some fits: each model is scored or skipped with a reason, none raises."""
    y = 100 + np.sin(np.arange(40) * 2 * np.pi / 4) + np.arange(40) * 0.1

    baselines = score_baselines(y, 12, {"val": np.array([12, 13]), "test": np.array([30])}, (4,))

    scored = {s.name for s in baselines.scores if s.statistical}
    assert scored | set(baselines.skipped) == set(STATISTICAL)
    assert not scored & set(baselines.skipped)


@pytest.mark.slow
def test_baselines_of_half_hourly_demand_see_the_week():
    """England and Wales demand (pmdarima's taylor): the last value plus the change one week
    earlier, and MSTL, beat persistence by far (issue 14 measured 0.20x and 0.17x)."""
    from pmdarima.datasets import load_taylor  # type: ignore[import-untyped, unused-ignore]

    demand = np.asarray(load_taylor(), dtype=np.float64)
    train_end, points = split_points(len(demand), window=48)
    periods = detect_periods(demand[:train_end], "PT30M")

    baselines = score_baselines(demand, train_end, points, periods)

    scores, persistence = score_map(baselines), baselines.persistence.val_mae
    assert periods == (48, 336)
    assert scores["persistence_seasonal_change(336)"].val_mae < 0.3 * persistence
    assert scores["MSTL"].val_mae < 0.3 * persistence
    assert scores["AutoETS(48)"].note.startswith("ETS ")  # deseasonalised: past 24 seasons
    assert "season 48 > 12" in baselines.skipped["AutoARIMA"]


@pytest.mark.slow
def test_baselines_of_weekly_co2_beat_persistence():
    import statsmodels.api as sm  # type: ignore[import-untyped, unused-ignore]

    co2 = sm.datasets.co2.load_pandas().data["co2"].ffill().to_numpy()
    train_end, points = split_points(len(co2), window=52)

    baselines = score_baselines(co2, train_end, points, (52,))

    best = baselines.best_statistical("val")
    assert best is not None and best.val_mae < 0.9 * baselines.persistence.val_mae
    assert baselines.skipped["MSTL"].startswith("MSTL needs two or more seasonal periods")


@pytest.mark.slow
def test_baselines_of_ten_thousand_rows_fit_the_budget():
    load = imputed(synthetic_series(10_000).values[:, 0])
    train_end, points = split_points(len(load), window=48)

    started = time.perf_counter()
    baselines = score_baselines(load, train_end, points, (24, 168), budget_seconds=60)
    elapsed = time.perf_counter() - started

    assert elapsed < 60
    assert {s.name for s in baselines.scores if s.statistical} == {"AutoETS", "AutoTheta", "MSTL"}


def test_baselines_round_trip_through_the_manifest_schema():
    baselines = Baselines(
        periods=(24,),
        scores=(
            BaselineScore(
                name="persistence",
                period=None,
                statistical=False,
                val_mae=2.0,
                test_mae=2.5,
                seconds=0.0,
            ),
            BaselineScore(
                name="AutoETS",
                period=24,
                statistical=True,
                val_mae=1.5,
                test_mae=2.0,
                seconds=1.2,
                note="ETS ANAN",
            ),
        ),
        skipped={"MSTL": "MSTL needs two or more seasonal periods"},
        model_val_mae=1.8,
        model_test_mae=2.1,
    )
    adapter = TypeAdapter(Baselines)

    assert adapter.validate_python(adapter.dump_python(baselines, mode="json")) == baselines
    assert baselines.best_statistical("val").name == "AutoETS"
    assert baselines.best("test").name == "AutoETS"
