"""Window/horizon alignment, the target transform and train-only statistics.

Covers training/transform.py and training/prepare.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.data import Series
from training.prepare import prepare
from training.transform import (
    WindowTransform,
    fit_scaler,
    future_targets,
    sliding_windows,
    window_ends,
)


@pytest.fixture
def indexed_values() -> np.ndarray:
    """60 rows whose target column is the row index and whose second column is 1000 + index."""
    rows = np.arange(60, dtype=np.float64)
    return np.column_stack([rows, 1000.0 + rows])


@pytest.fixture
def shifted_series() -> Series:
    """200 rows: the first 140 (the training split) sit near 0, the rest jump to ~5000.

    A scaler or imputer that looked past the training split would see a very different mean.
    """
    rng = np.random.default_rng(0)
    load = np.concatenate([rng.normal(10.0, 2.0, 140), rng.normal(5000.0, 300.0, 60)])
    temp = np.concatenate([rng.normal(-5.0, 1.0, 140), rng.normal(40.0, 9.0, 60)])
    values = np.column_stack([load, temp])
    values[0, 1] = np.nan  # a leading gap: must be filled from the training split alone
    values[150, 0] = np.nan  # a later gap: forward-filled
    return Series(values=values, feature_names=("load", "temp"), target="load")


# ---- alignment ------------------------------------------------------------------------------


def test_window_ends_cover_every_complete_window():
    np.testing.assert_array_equal(window_ends(10, 3, 2), [2, 3, 4, 5, 6, 7])


@given(
    window=st.integers(min_value=1, max_value=30),
    horizon=st.integers(min_value=1, max_value=10),
    extra_rows=st.integers(min_value=0, max_value=40),
)
def test_window_and_targets_align_with_row_index(window, horizon, extra_rows):
    n_rows = window + horizon - 1 + extra_rows
    values = np.column_stack([np.arange(n_rows, dtype=np.float64), -np.arange(n_rows)])
    ends = window_ends(n_rows, window, horizon)

    windows = sliding_windows(values, window, ends)
    targets = future_targets(values[:, 0], horizon, ends)

    assert len(ends) == extra_rows
    for k, t in enumerate(ends):
        np.testing.assert_array_equal(windows[k, :, 0], np.arange(t - window + 1, t + 1))
        np.testing.assert_array_equal(windows[k, :, 1], -np.arange(t - window + 1, t + 1))
        np.testing.assert_array_equal(targets[k], np.arange(t + 1, t + horizon + 1))


@pytest.mark.parametrize("mode", ["delta", "level"])
def test_training_pairs_decode_to_rows_after_window(indexed_values, mode):
    window, horizon = 5, 3
    transform = WindowTransform.fit(
        fit_scaler(indexed_values),
        indexed_values,
        target_index=0,
        steps=window,
        horizon=horizon,
        mode=mode,
        inputs="level",
    )

    x, y, anchors = transform.training_pairs(indexed_values)

    ends = np.arange(window - 1, len(indexed_values) - horizon)
    assert x.shape == (len(ends), window, 2)
    assert y.shape == (len(ends), horizon)
    # The input window ending at t holds rows t-window+1 .. t, in scaled units.
    mean, scale = transform.target_affine()
    np.testing.assert_allclose(x[:, 0, 0] * scale + mean, ends - window + 1, atol=1e-4)
    np.testing.assert_allclose(x[:, -1, 0] * scale + mean, ends, atol=1e-4)
    # The model targets decode to rows t+1 .. t+horizon in target units.
    expected = ends[:, None] + np.arange(1, horizon + 1)
    np.testing.assert_allclose(transform.decode(y, anchors), expected, atol=1e-3)


@pytest.mark.parametrize("mode", ["delta", "level"])
def test_decode_inverts_encode_targets(mode):
    rng = np.random.default_rng(1)
    train = np.column_stack([np.cumsum(rng.normal(0, 5, 300)) + 20_000, rng.normal(0, 1, 300)])
    transform = WindowTransform.fit(
        fit_scaler(train), train, target_index=0, steps=8, horizon=4, mode=mode
    )
    ends = window_ends(len(train), 8, 4)
    raw_future = future_targets(train[:, 0], 4, ends)
    _, anchors = transform.encode_windows(sliding_windows(train, 8, ends))
    scaled_future = transform.scale(train)[:, 0].astype(np.float64)[ends[:, None] + np.arange(1, 5)]

    decoded = transform.decode(transform.encode_targets(scaled_future, anchors), anchors)

    np.testing.assert_allclose(decoded, raw_future, rtol=1e-5)


def test_delta_anchor_is_last_observed_target(indexed_values):
    transform = WindowTransform.fit(
        fit_scaler(indexed_values),
        indexed_values,
        target_index=0,
        steps=4,
        horizon=1,
        inputs="level",
    )
    windows = sliding_windows(indexed_values, 4, np.array([3, 10]))

    x, anchors = transform.encode_windows(windows)

    np.testing.assert_array_equal(anchors[:, 0], x[:, -1, 0])
    mean, scale = transform.target_affine()
    np.testing.assert_allclose(anchors[:, 0] * scale + mean, [3.0, 10.0], atol=1e-4)


def test_transform_round_trips_through_manifest(indexed_values):
    transform = WindowTransform.fit(
        fit_scaler(indexed_values),
        indexed_values,
        target_index=1,
        steps=6,
        horizon=2,
        lags=(9,),
        anchor_period=9,
    )
    spec = transform.to_spec()

    restored = WindowTransform.from_spec(transform.scaler, spec, window=15, horizon=2)

    assert restored.mode == "delta"
    assert (restored.window, restored.horizon, restored.target_index) == (15, 2, 1)
    assert (restored.inputs, restored.steps, restored.lags) == ("relative", 6, (9,))
    assert (restored.anchor_period, restored.channels) == (9, spec.channels(2)) == (9, 4)
    assert restored.relative_scale == transform.relative_scale
    np.testing.assert_array_equal(restored.step_scale, transform.step_scale)


def test_unscaled_transform_is_identity(indexed_values):
    transform = WindowTransform.fit(
        fit_scaler(indexed_values, scaling=False),
        indexed_values,
        target_index=0,
        steps=4,
        horizon=1,
    )

    np.testing.assert_array_equal(transform.scale(indexed_values), indexed_values)
    assert transform.target_affine() == (0.0, 1.0)
    np.testing.assert_array_equal(transform.step_scale, [1.0])


# ---- train-only statistics (leakage) ----------------------------------------------------------


def test_prepare_fits_scaler_on_training_rows_only(shifted_series):
    prepared = prepare(shifted_series, val_fraction=0.15, test_fraction=0.15, window=8, horizon=2)

    train_rows = prepared.splits["train"]
    assert len(train_rows) == 140
    scaler = prepared.transform.scaler
    np.testing.assert_allclose(scaler.mean_, train_rows.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, train_rows.std(axis=0), rtol=1e-12)
    # Sanity check that the test can fail: the full series has a very different mean.
    assert scaler.mean_[0] < 20
    assert np.nanmean(shifted_series.values[:, 0]) > 1000


def test_prepare_imputes_with_training_means_only(shifted_series):
    prepared = prepare(shifted_series, val_fraction=0.15, test_fraction=0.15, window=8, horizon=2)

    train_temp = shifted_series.values[1:140, 1]
    assert prepared.splits["train"][0, 1] == pytest.approx(train_temp.mean())
    np.testing.assert_allclose(prepared.train_means[1], train_temp.mean())
    # Row 150 (validation split, row 10 there) is carried forward from row 149.
    assert prepared.splits["val"][10, 0] == shifted_series.values[149, 0]
    assert prepared.n_imputed == 2


def test_prepare_step_scale_uses_training_split_only(shifted_series):
    prepared = prepare(shifted_series, val_fraction=0.15, test_fraction=0.15, window=8, horizon=2)

    train = prepared.splits["train"]
    scaled_target = (train[:, 0] - train[:, 0].mean()) / train[:, 0].std()
    ends = np.arange(7, len(train) - 2)
    deltas = scaled_target[ends[:, None] + np.arange(1, 3)] - scaled_target[ends, None]
    rms = np.sqrt(np.mean(deltas**2, axis=0))
    np.testing.assert_allclose(prepared.transform.step_scale, rms, rtol=1e-5)


def test_step_scale_keeps_steady_trend_targets_near_unit_scale():
    """A counter-like target has a constant step (std 0): targets must still be O(1)."""
    rows = np.arange(300, dtype=np.float64)
    values = np.column_stack([rows, np.sin(rows / 5.0)])
    series = Series(values=values, feature_names=("load", "noise"), target="load")

    prepared = prepare(series, val_fraction=0.15, test_fraction=0.15, window=12, horizon=3)

    _, y, _ = prepared.pairs["train"]
    np.testing.assert_allclose(np.sqrt(np.mean(y**2, axis=0)), 1.0, rtol=1e-6)


def test_prepare_windows_stay_inside_each_split(shifted_series):
    window, horizon = 8, 2
    prepared = prepare(
        shifted_series,
        val_fraction=0.15,
        test_fraction=0.15,
        window=window,
        horizon=horizon,
        inputs="level",
    )

    for name, rows in prepared.splits.items():
        x, y, anchors = prepared.pairs[name]
        assert len(x) == len(rows) - window - horizon + 1
        np.testing.assert_allclose(x[0], prepared.transform.scale(rows[:window]))
        np.testing.assert_allclose(
            x[-1], prepared.transform.scale(rows[-window - horizon : -horizon])
        )
        last_future = prepared.transform.decode(y[-1:], anchors[-1:])
        np.testing.assert_allclose(last_future[0], rows[-horizon:, 0], rtol=1e-5)


# ---- relative inputs and seasonal lags ---------------------------------------------------------


def test_relative_target_inputs_stay_in_range_on_a_trend():
    """A steady trend: level inputs leave the training range, relative ones do not."""
    rows = np.arange(400, dtype=np.float64)
    values = np.column_stack([10.0 * rows + 5.0 * np.sin(rows / 3.0), np.cos(rows / 7.0)])
    train = values[:280]
    relative = WindowTransform.fit(fit_scaler(train), train, target_index=0, steps=8, horizon=1)
    level = WindowTransform.fit(
        fit_scaler(train), train, target_index=0, steps=8, horizon=1, inputs="level"
    )
    train_ends = window_ends(280, 8, 1)
    late_ends = window_ends(400, 8, 1)[-50:]

    def target_inputs(transform, ends):
        x, _ = transform.encode_windows(sliding_windows(values, 8, ends))
        return x[:, :, 0]

    seen = target_inputs(relative, train_ends)
    later = target_inputs(relative, late_ends)
    assert later.min() >= seen.min() - 0.5 and later.max() <= seen.max() + 0.5
    assert target_inputs(level, late_ends).min() > target_inputs(level, train_ends).max()
    np.testing.assert_array_equal(later[:, -1], 0.0)  # relative to the last observed value


def test_lag_channel_holds_the_target_one_period_before_the_next_step(indexed_values):
    steps, period = 4, 10
    transform = WindowTransform.fit(
        fit_scaler(indexed_values),
        indexed_values,
        target_index=0,
        steps=steps,
        horizon=1,
        inputs="level",
        lags=(period,),
    )
    assert transform.window == steps + period
    end = 30
    windows = sliding_windows(indexed_values, transform.window, np.array([end]))

    x, _ = transform.encode_windows(windows)

    mean, scale = transform.target_affine()
    assert x.shape == (1, steps, 3)
    np.testing.assert_allclose(x[0, :, 0] * scale + mean, np.arange(end - 3, end + 1), atol=1e-4)
    expected = np.arange(end - 3, end + 1) + 1 - period  # y[t + 1 - period] at each step t
    np.testing.assert_allclose(x[0, :, 2] * scale + mean, expected, atol=1e-4)


def test_monitored_rows_show_the_last_change_of_a_relative_target(indexed_values):
    transform = WindowTransform.fit(
        fit_scaler(indexed_values), indexed_values, target_index=0, steps=4, horizon=1
    )
    x, _ = transform.encode_windows(sliding_windows(indexed_values, 4, np.array([10, 20])))

    rows = transform.monitored_rows(x)

    np.testing.assert_array_equal(rows[:, 0], x[:, -2, 0])  # the step before the last value
    np.testing.assert_array_equal(rows[:, 1], x[:, -1, 1])  # other features: the newest value
    assert np.all(rows[:, 0] < 0)  # a rising target: the step before lies below the last


def test_seasonal_anchor_is_last_value_plus_the_change_one_period_earlier():
    period, horizon = 6, 2
    rows = np.arange(80, dtype=np.float64)
    values = np.column_stack([rows % period * 10.0 + 0.5 * rows])
    transform = WindowTransform.fit(
        fit_scaler(values),
        values,
        target_index=0,
        steps=4,
        horizon=horizon,
        lags=(period,),
        anchor_period=period,
    )
    end = 40
    windows = sliding_windows(values, transform.window, np.array([end]))

    _, anchors = transform.encode_windows(windows)

    mean, scale = transform.target_affine()
    y = values[:, 0]
    expected = [y[end] + y[end + k - period] - y[end - period] for k in (1, 2)]
    np.testing.assert_allclose(anchors[0] * scale + mean, expected, atol=1e-3)
    # This series repeats its cycle on a trend: the seasonal anchor is the future itself.
    np.testing.assert_allclose(expected, y[end + 1 : end + 3])


def test_anchored_transform_sees_the_change_over_its_period(indexed_values):
    """With an anchor period p the last channel is y[t] - y[t-p] at each step, relative to the
    last such change and in units of the anchored target's one-step scale."""
    steps, period = 4, 5
    raw = indexed_values.copy()
    raw[:, 0] += np.random.default_rng(3).normal(0, 3, len(raw))
    transform = WindowTransform.fit(
        fit_scaler(raw),
        raw,
        target_index=0,
        steps=steps,
        horizon=1,
        lags=(period,),
        anchor_period=period,
    )
    assert transform.channels == 2 + 1 + 1
    end = 30
    windows = sliding_windows(raw, transform.window, np.array([end]))

    x, _ = transform.encode_windows(windows)

    mean, scale = transform.target_affine()
    y = (raw[:, 0] - mean) / scale
    t = np.arange(end - steps + 1, end + 1)
    change = y[t] - y[t - period]
    expected = (change - change[-1]) / transform.step_scale[0]
    np.testing.assert_allclose(x[0, :, -1], expected, atol=1e-4)
    assert x[0, -1, -1] == 0.0
