"""Seasonal periods from the time step and the training split's autocorrelation
(training/seasons.py), on synthetic and on public real series shipped inside installed packages
(statsmodels, pmdarima, vega_datasets: nothing is downloaded)."""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np
import pytest

from training.data import synthetic_series
from training.seasons import calendar_candidates, detect_periods


def training_split(y: np.ndarray, val_fraction: float = 0.15, test_fraction: float = 0.15):
    """The first rows, as training's default chronological split keeps them."""
    n = len(y)
    return y[: n - round(n * val_fraction) - round(n * test_fraction)]


def vega_column(file_name: str, column: str) -> np.ndarray:
    """A numeric column of a CSV shipped with vega_datasets."""
    text = (resources.files("vega_datasets") / "_data" / file_name).read_text()
    return np.array([float(row[column]) for row in csv.DictReader(text.splitlines())])


# ---- calendar candidates --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("PT15M", (96, 672)),
        ("PT30M", (48, 336)),
        ("PT1H", (24, 168)),
        ("PT2H", (12, 84)),
        ("P1D", (7, 365)),
        ("P7D", (52,)),
        ("P1W", (52,)),
        ("P1M", (12,)),
        ("P3M", (4,)),
        ("P1Y", ()),
        ("1", ()),
        (None, ()),
        ("not a duration", ()),
    ],
)
def test_calendar_candidates_follow_the_step(step, expected):
    assert calendar_candidates(step) == expected


# ---- synthetic and degenerate series -------------------------------------------------------


@pytest.mark.parametrize("steps", [1500, 6000])
def test_detect_periods_finds_day_and_week_in_synthetic_series(steps):
    load = synthetic_series(steps).values[:, 0]  # has missing readings

    assert detect_periods(training_split(load), "PT1H") == (24, 168)


def test_detect_periods_needs_two_cycles_in_the_split():
    load = synthetic_series(6000).values[:300, 0]  # under two weeks

    assert detect_periods(load, "PT1H") == (24,)


def test_detect_periods_carries_missing_values_forward():
    load = synthetic_series(1500).values[:, 0]
    holes = load.copy()
    holes[np.random.default_rng(0).random(len(holes)) < 0.05] = np.nan
    holes[:3] = np.nan

    assert detect_periods(training_split(holes), "PT1H") == (24, 168)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [500, 2000, 8000])
@pytest.mark.parametrize("step", ["PT1H", "P1D", "P7D", "P1M", None])
def test_detect_periods_finds_nothing_in_white_noise_or_random_walks(seed, n, step):
    noise = np.random.default_rng(seed).normal(size=n)

    assert detect_periods(noise, step) == ()
    assert detect_periods(np.cumsum(noise), step) == ()
    assert detect_periods(np.cumsum(noise + 0.5), step) == ()  # with drift


@pytest.mark.parametrize("values", [np.full(500, 3.0), np.full(500, np.nan), np.arange(3.0)])
def test_detect_periods_of_degenerate_series_is_empty(values):
    assert detect_periods(values, "PT1H") == ()


def test_detect_periods_without_a_calendar_step_takes_the_strongest_peak():
    t = np.arange(3000)
    cycle = np.sin(2 * np.pi * t / 37) + np.random.default_rng(1).normal(0, 0.5, len(t))

    assert detect_periods(cycle, "1") == (37,)
    assert detect_periods(cycle, None) == (37,)


# ---- real series ---------------------------------------------------------------------------


def test_detect_periods_finds_the_year_in_weekly_co2():
    import statsmodels.api as sm  # type: ignore[import-untyped, unused-ignore]

    co2 = sm.datasets.co2.load_pandas().data["co2"].to_numpy()  # weekly, 59 missing weeks
    assert np.isnan(co2).any()

    assert detect_periods(training_split(co2), "P7D") == (52,)


def test_detect_periods_finds_day_and_week_in_half_hourly_demand():
    from pmdarima.datasets import load_taylor  # type: ignore[import-untyped, unused-ignore]

    demand = np.asarray(load_taylor(), dtype=np.float64)  # England and Wales, 12 weeks

    assert detect_periods(training_split(demand), "PT30M") == (48, 336)


@pytest.mark.parametrize("step", ["P1M", "1", None])
def test_detect_periods_finds_the_solar_cycle_in_monthly_sunspots(step):
    """No yearly cycle in sunspots: the strongest ACF peak, the ~11-year cycle, is taken."""
    from pmdarima.datasets import load_sunspots  # type: ignore[import-untyped, unused-ignore]

    sunspots = np.asarray(load_sunspots(), dtype=np.float64)

    (period,) = detect_periods(training_split(sunspots), step)
    assert 9 * 12 <= period <= 12 * 12


def test_detect_periods_finds_the_year_in_daily_seattle_temperatures():
    temp_max = vega_column("seattle-weather.csv", "temp_max")  # 2012-2015, daily

    assert detect_periods(training_split(temp_max), "P1D") == (365,)


def test_detect_periods_finds_no_week_in_hourly_weather():
    """Every daily series has an ACF peak at lag 168; weather has no weekly pattern to lift it
    above lags 144 and 192."""
    temp = vega_column("sf-temps.csv", "temp")  # San Francisco 2010, hourly

    assert detect_periods(training_split(temp), "PT1H") == (24,)
