"""Numerics of the streaming statistics behind the detectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitoring.ewstats import WEIGHT_TABLE, EWHistogram, EWSlice, EWStats, psi
from monitoring.reference import reference_bins


def test_ewstats_batch_update_equals_one_at_a_time():
    x = np.random.default_rng(0).normal(3.0, 2.0, (300, 3))
    batched, single = EWStats(3, halflife=8), EWStats(3, halflife=8)

    for lo in range(0, 300, 37):
        batched.update(x[lo : lo + 37])
    for row in x:
        single.update(row[None])

    np.testing.assert_allclose(batched.mean, single.mean, rtol=1e-12)
    np.testing.assert_allclose(batched.var, single.var, rtol=1e-10)
    assert batched.count == single.count == 300


def test_ewstats_with_infinite_halflife_is_the_plain_mean_and_variance():
    x = np.random.default_rng(1).normal(-5.0, 0.5, (2000, 2))
    stats = EWStats(2, halflife=1e12)

    for lo in range(0, 2000, 64):
        stats.update(x[lo : lo + 64])

    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.var, x.var(axis=0), rtol=1e-6)


def test_ewstats_variance_stays_exact_near_collapse():
    """A huge level with a tiny spread: E[x^2]-E[x]^2 would lose every digit here."""
    rng = np.random.default_rng(2)
    x = 1e8 + 1e-3 * rng.normal(size=(5000, 1))
    stats = EWStats(1, halflife=1e12)

    for lo in range(0, 5000, 50):
        stats.update(x[lo : lo + 50])

    naive = np.mean(x**2) - np.mean(x) ** 2
    assert stats.var[0] == pytest.approx(x.var(), rel=1e-3)
    assert abs(naive - x.var()) > 10 * x.var()  # the naive formula really fails on this input


def test_ewstats_constant_stream_has_zero_variance():
    stats = EWStats(2, halflife=8)
    stats.update(np.full((100, 2), 0.123456789))
    assert np.all(stats.var <= 1e-30)  # rounding of the mean only


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=64), st.floats(min_value=1.0, max_value=1000.0))
def test_ewstats_forgets_with_the_configured_halflife(n_new, halflife):
    stats = EWStats(1, halflife=halflife)
    stats.update(np.zeros((int(40 * halflife) + 10, 1)))  # old weight is 1 - 2**-40
    stats.update(np.ones((n_new, 1)))
    expected_weight_on_new = 1 - 0.5 ** (n_new / halflife)
    assert stats.mean[0] == pytest.approx(expected_weight_on_new, rel=1e-6, abs=1e-9)


def test_histogram_effective_sample_reaches_500_windows():
    hist = EWHistogram([[0.0]], halflife=256)
    hist.update(np.zeros((300, 1)))
    assert hist.effective_samples < 500
    hist.update(np.zeros((3000, 1)))
    assert 500 <= hist.effective_samples < 800


def test_psi_is_zero_for_identical_and_grows_with_shift():
    expected = np.full(10, 0.1)
    assert psi(expected, expected) == pytest.approx(0.0, abs=1e-12)
    small = psi(np.array([0.08, 0.12] * 5), expected)
    large = psi(np.array([0.0] * 5 + [0.2] * 5), expected)
    assert 0 < small < 0.1 < large


def test_reference_bins_put_float32_copies_of_discrete_values_in_the_same_bin():
    hours = np.sin(2 * np.pi * np.arange(24 * 50) / 24)
    scaled = (hours - hours.mean()) / hours.std()
    deciles, bin_edges, bin_fractions = reference_bins(scaled)
    edges = np.asarray(bin_edges)

    exact = np.searchsorted(edges, scaled, side="right")
    rounded = np.searchsorted(edges, scaled.astype(np.float32).astype(np.float64), side="right")

    assert np.array_equal(exact, rounded)
    assert len(deciles) == 9
    assert sum(bin_fractions) == pytest.approx(1.0)


def test_ewstats_batches_longer_than_the_weight_table_match_short_ones():
    x = np.random.default_rng(4).normal(size=(3 * WEIGHT_TABLE + 7, 2))
    long, short = EWStats(2, halflife=64), EWStats(2, halflife=64)

    long.update(x)
    for lo in range(0, len(x), 100):
        short.update(x[lo : lo + 100])

    np.testing.assert_allclose(long.mean, short.mean, rtol=1e-12)
    np.testing.assert_allclose(long.var, short.var, rtol=1e-10)
    assert long.weight == pytest.approx(short.weight, rel=1e-12)


def test_ewslice_reads_columns_of_the_shared_statistics():
    stats = EWStats(3, halflife=8)
    stats.update(np.random.default_rng(5).normal(size=(50, 3)))
    tail = EWSlice(stats, slice(1, None))

    assert tail.count == 50
    np.testing.assert_array_equal(tail.mean, stats.mean[1:])
    np.testing.assert_array_equal(tail.var, stats.var[1:])


def test_histogram_bins_features_with_uneven_edges():
    """Features whose edge lists differ in length (discrete features have fewer distinct
    deciles, a fine grid has many); values on an edge go right, +/-inf to the end bins."""
    rng = np.random.default_rng(6)
    edges = [[-1.0, 0.0, 1.0], [0.5], [-2.0, -1.0, 0.0, 1.0, 2.0], list(np.linspace(-3, 3, 999))]
    x = rng.normal(size=(400, 4))
    x[:5, 0] = [-1.0, 0.0, 1.0, np.inf, -np.inf]
    x[:3, 3] = [-4.0, 3.0, 4.0]
    hist = EWHistogram(edges, halflife=1e12)  # plain shares

    hist.update(x)

    assert [len(f) for f in hist.fractions] == [4, 2, 6, 1000]
    for f, e in enumerate(edges):
        # Brute force: a value's bin is the number of edges at or below it.
        bins = (x[:, f, None] >= np.asarray(e)).sum(axis=1)
        expected = np.bincount(bins, minlength=len(e) + 1) / len(x)
        np.testing.assert_allclose(hist.fractions[f], expected, atol=1e-9)
    assert hist.fractions[0][-1] > 0 and hist.fractions[3][-1] > 0  # top bins reached


def test_histogram_decays_the_same_in_one_batch_or_many():
    """Batch updates weigh samples as one-at-a-time updates do, past the weight table too."""
    x = np.random.default_rng(7).normal(size=(WEIGHT_TABLE + 300, 2))
    edges = [[-1.0, 0.0, 1.0], [0.0]]
    whole, single = EWHistogram(edges, halflife=32), EWHistogram(edges, halflife=32)

    whole.update(x)
    for row in x:
        single.update(row[None, :])

    for a, b in zip(whole.fractions, single.fractions, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
        assert a.sum() == pytest.approx(1.0)
    recent = x[-64:, 1] >= 0.0  # a half-life of 32: the last samples dominate
    assert abs(whole.fractions[1][1] - recent.mean()) < 0.2
