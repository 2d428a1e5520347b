"""``--window auto`` (training/windowing.py): rows for the LSTM and seasonal lag channels."""

from __future__ import annotations

from training.manifest import request_window
from training.windowing import choose_window, fixed_window


def test_hourly_periods_give_two_days_of_rows_and_a_weekly_lag():
    choice = choose_window((24, 168), shortest_split=900, horizon=1)

    assert (choice.steps, choice.lags) == (48, (24, 168))
    assert choice.window == 48 + 168
    assert "seasonal periods found: 24, 168" in choice.reason


def test_half_hourly_periods_cap_the_rows_and_lag_the_week():
    choice = choose_window((48, 336), shortest_split=600, horizon=1)

    assert (choice.steps, choice.lags) == (64, (48, 336))


def test_a_long_cycle_is_seen_through_its_lag_only():
    choice = choose_window((130,), shortest_split=420, horizon=1)

    assert (choice.steps, choice.lags) == (32, (130,))


def test_no_season_gives_the_default_rows():
    choice = choose_window((), shortest_split=300, horizon=1)

    assert (choice.steps, choice.lags) == (32, ())
    assert "seasonal periods found: none" in choice.reason


def test_a_lag_too_long_for_the_splits_is_dropped_and_said():
    choice = choose_window((7, 365), shortest_split=219, horizon=1)

    assert (choice.steps, choice.lags) == (16, (7,))
    assert "period 365 is too long for a 219-row split" in choice.reason


def test_rows_shrink_to_fit_short_data():
    choice = choose_window((), shortest_split=20, horizon=1)

    assert choice.steps == 18
    assert request_window(choice.steps, choice.lags) + 1 + 1 <= 20


def test_a_fixed_window_has_no_lags():
    choice = fixed_window(48, (24, 168))

    assert (choice.steps, choice.lags, choice.window) == (48, (), 48)
