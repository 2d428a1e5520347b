"""Realized accuracy without gRPC: series tracking and scoring (monitoring/realized.py) against
a brute-force reference, and its Prometheus counters on a fresh registry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitoring.metrics import RealizedAccuracyMetrics
from monitoring.realized import (
    CHUNK_WINDOWS,
    MAX_LEVEL_LABELS,
    MAX_WINDOW_LEVELS,
    RealizedAccuracy,
    RealizedTotals,
    level_label,
)

WINDOW, FEATURES, HORIZON, TARGET = 12, 3, 3, 1


def series_rows(steps: int, seed: int = 0) -> np.ndarray:
    """A random float32 series ``[steps, FEATURES]``."""
    return np.random.default_rng(seed).normal(size=(steps, FEATURES)).astype(np.float32)


def window_at(rows: np.ndarray, end: int) -> np.ndarray:
    """The window ending at row ``end`` (inclusive), ``[WINDOW, FEATURES]``."""
    return rows[end - WINDOW + 1 : end + 1]


def tracker(**kwargs) -> RealizedAccuracy:
    return RealizedAccuracy(
        window=WINDOW, horizon=HORIZON, n_features=FEATURES, target_index=TARGET, **kwargs
    )


@dataclass
class Reference:
    """The contract, by brute force: exact row comparison for every shift, smallest first."""

    window: int = WINDOW
    horizon: int = HORIZON
    last: dict[str, tuple[np.ndarray, np.ndarray, dict | None]] = field(default_factory=dict)
    values: int = 0
    abs_error: float = 0.0
    persistence_abs_error: float = 0.0
    squared_error: float = 0.0
    outcomes: dict[str, int] = field(
        default_factory=lambda: {"continued": 0, "restarted": 0, "new": 0}
    )
    scored: dict[float, int] = field(default_factory=dict)
    covered: dict[float, int] = field(default_factory=dict)

    def shift(self, old: np.ndarray, new: np.ndarray) -> int:
        for k in range(1, self.window):
            if np.array_equal(new[: self.window - k], old[k:]):  # == on floats: -0.0 == 0.0
                return k
        return 0

    def add(self, sid: str, window: np.ndarray, forecast: np.ndarray, intervals=None) -> None:
        forecast = np.asarray(forecast, np.float32)
        if sid in self.last:
            old, old_forecast, old_intervals = self.last[sid]
            k = self.shift(old, window)
            if k:
                self.outcomes["continued"] += 1
                for j in range(1, min(k, self.horizon) + 1):
                    actual = float(window[self.window - 1 - k + j, TARGET])
                    error = float(old_forecast[j - 1]) - actual
                    self.values += 1
                    self.abs_error += abs(error)
                    self.persistence_abs_error += abs(float(old[-1, TARGET]) - actual)
                    self.squared_error += error * error
                    for level, (lo, hi) in (old_intervals or {}).items():
                        self.scored[level] = self.scored.get(level, 0) + 1
                        inside = float(lo[j - 1]) <= actual <= float(hi[j - 1])
                        self.covered[level] = self.covered.get(level, 0) + int(inside)
            else:
                self.outcomes["restarted"] += 1
        else:
            self.outcomes["new"] += 1
        self.last[sid] = (window.copy(), forecast, intervals)

    def assert_matches(self, totals: RealizedTotals) -> None:
        assert totals.values == self.values
        assert totals.windows == self.outcomes
        assert totals.abs_error == pytest.approx(self.abs_error, rel=1e-12, abs=1e-9)
        assert totals.persistence_abs_error == pytest.approx(
            self.persistence_abs_error, rel=1e-12, abs=1e-9
        )
        assert totals.squared_error == pytest.approx(self.squared_error, rel=1e-12, abs=1e-9)


# -------------------------------------------------------------------------------------------
# Continuation and scoring
# -------------------------------------------------------------------------------------------


def test_series_sent_row_by_row_scores_step_one_of_every_forecast():
    rows = series_rows(60)
    forecasts = np.random.default_rng(1).normal(size=(60, HORIZON))
    realized, reference = tracker(), Reference()
    for end in range(WINDOW - 1, 60):
        realized.submit(["s"], window_at(rows, end)[None], forecasts[end][None])
        reference.add("s", window_at(rows, end), forecasts[end])
    totals = realized.totals()
    reference.assert_matches(totals)
    assert totals.values == 60 - WINDOW  # step 1 of every window but the last
    assert totals.windows == {"continued": 60 - WINDOW, "restarted": 0, "new": 1}


@pytest.mark.parametrize("k", [1, 2, HORIZON, HORIZON + 1, WINDOW - 1])
def test_a_shift_of_k_rows_scores_steps_up_to_k(k):
    rows = series_rows(80)
    forecast = np.array([10.0, 20.0, 30.0])
    realized, reference = tracker(), Reference()
    for end in (WINDOW - 1, WINDOW - 1 + k):
        realized.submit(["s"], window_at(rows, end)[None], forecast[None])
        reference.add("s", window_at(rows, end), forecast)
    totals = realized.totals()
    reference.assert_matches(totals)
    assert totals.values == min(k, HORIZON)
    first = WINDOW - 1
    actual = rows[first + 1 : first + 1 + min(k, HORIZON), TARGET].astype(np.float64)
    assert totals.abs_error == pytest.approx(np.abs(forecast[: len(actual)] - actual).sum())
    persistence = float(rows[first, TARGET])
    assert totals.persistence_abs_error == pytest.approx(np.abs(persistence - actual).sum())


def test_a_window_that_does_not_continue_starts_the_series_over():
    rows, other = series_rows(40, seed=1), series_rows(40, seed=2)
    realized = tracker()
    f = np.zeros((1, HORIZON))
    realized.submit(["s"], window_at(rows, 20)[None], f)
    realized.submit(["s"], window_at(other, 21)[None], f)  # other data: starts over
    realized.submit(["s"], window_at(rows, 22)[None], f)  # continues neither: starts over
    realized.submit(["s"], window_at(rows, 22)[None], f)  # the same window again: k = 0
    assert realized.totals().values == 0
    realized.submit(["s"], window_at(rows, 23)[None], f)  # continues the last one
    totals = realized.totals()
    assert totals.values == 1
    assert totals.windows == {"continued": 1, "restarted": 3, "new": 1}


def test_one_changed_value_in_the_overlap_is_not_a_continuation():
    rows = series_rows(40)
    realized = tracker()
    f = np.zeros((1, HORIZON))
    realized.submit(["s"], window_at(rows, 20)[None], f)
    changed = window_at(rows, 21).copy()
    changed[3, 2] = np.nextafter(changed[3, 2], np.float32(np.inf))  # one ulp, a non-target
    realized.submit(["s"], changed[None], f)
    assert realized.totals().windows == {"continued": 0, "restarted": 1, "new": 1}


def test_negative_zero_equals_zero():
    rows = series_rows(40)
    rows[15, 0] = 0.0
    realized = tracker()
    f = np.zeros((1, HORIZON))
    realized.submit(["s"], window_at(rows, 20)[None], f)
    again = window_at(rows, 21).copy()
    again[15 - (21 - WINDOW + 1), 0] = -0.0
    realized.submit(["s"], again[None], f)
    assert realized.totals().windows["continued"] == 1


def test_a_constant_series_continues_by_the_smallest_shift():
    rows = np.ones((40, FEATURES), np.float32)
    realized, reference = tracker(), Reference()
    forecast = np.array([1.5, 2.0, 3.0])
    for end in (20, 25):
        realized.submit(["s"], window_at(rows, end)[None], forecast[None])
        reference.add("s", window_at(rows, end), forecast)
    reference.assert_matches(realized.totals())
    assert realized.totals().values == 1  # k = 1: every shift fits, the smallest wins


def test_repeated_rows_fall_back_to_the_shift_that_really_fits():
    # The old window's last row appears again in the new window at a shift that does not
    # fit: the next candidate is tried.
    rows = series_rows(60)
    rows[30] = rows[27]
    realized, reference = tracker(), Reference()
    f = np.array([1.0, 2.0, 3.0])
    for end in (27, 30):
        realized.submit(["s"], window_at(rows, end)[None], f[None])
        reference.add("s", window_at(rows, end), f)
    reference.assert_matches(realized.totals())
    assert realized.totals().values == 3


def test_interleaved_series_and_several_windows_of_one_series_in_one_request_keep_order():
    rows = {sid: series_rows(200, seed=i) for i, sid in enumerate("abc")}
    rng = np.random.default_rng(3)
    realized, reference = tracker(), Reference()
    ends = dict.fromkeys(rows, WINDOW - 1)
    for _ in range(40):
        sids = list(rng.choice(list(rows), size=rng.integers(1, 7)))  # repeats in a request
        windows, forecasts = [], rng.normal(size=(len(sids), HORIZON))
        for sid, forecast in zip(sids, forecasts, strict=True):
            ends[sid] += int(rng.integers(1, 4))
            windows.append(window_at(rows[sid], ends[sid]))
            reference.add(sid, windows[-1], forecast)
        realized.submit(sids, np.stack(windows), forecasts)
        if rng.random() < 0.3:
            realized.flush()
    reference.assert_matches(realized.totals())
    assert reference.values > 40


def test_more_windows_than_a_chunk_in_one_flush():
    rows = series_rows(CHUNK_WINDOWS * 3 + WINDOW)
    forecasts = np.random.default_rng(4).normal(size=(len(rows), HORIZON))
    realized, reference = tracker(), Reference()
    ends = list(range(WINDOW - 1, len(rows)))
    # One series' windows split over requests of 100, all scored in one flush.
    for lo in range(0, len(ends), 100):
        part = ends[lo : lo + 100]
        realized.submit(
            ["s"] * len(part), np.stack([window_at(rows, e) for e in part]), forecasts[part]
        )
        for e in part:
            reference.add("s", window_at(rows, e), forecasts[e])
    reference.assert_matches(realized.totals())
    assert realized.totals().values == len(ends) - 1


def test_windows_without_a_series_id_are_not_tracked():
    rows = series_rows(40)
    realized = tracker()
    f = np.zeros((2, HORIZON))
    realized.submit(["", "s"], np.stack([window_at(rows, 20), window_at(rows, 20)]), f)
    realized.submit(["s", ""], np.stack([window_at(rows, 21), window_at(rows, 21)]), f)
    totals = realized.totals()
    assert totals.windows == {"continued": 1, "restarted": 0, "new": 1}
    assert totals.tracked_series == 1


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from("xyz"), st.integers(0, WINDOW + 2), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    request_size=st.integers(1, 5),
    max_series=st.integers(1, 4),
)
def test_totals_equal_the_brute_force_reference(
    steps: list[tuple[str, int, bool]], request_size: int, max_series: int
) -> None:
    """Random series, shifts (0: the same window again; beyond the window: no overlap) and
    restarts on other data, in requests of several windows, with an LRU cap."""
    data = {sid: series_rows(400, seed=i) for i, sid in enumerate("xyz")}
    noise = series_rows(400, seed=9)
    rng = np.random.default_rng(0)
    realized = tracker(max_series=max_series)
    reference = LruReference(max_series)
    ends = dict.fromkeys(data, WINDOW)
    batch: list[tuple[str, np.ndarray, np.ndarray]] = []

    def send() -> None:
        ids, windows, forecasts = zip(*batch, strict=True)
        realized.submit(list(ids), np.stack(windows), np.stack(forecasts))
        batch.clear()

    for sid, shift, other in steps:
        ends[sid] = min(ends[sid] + shift, 399)
        source = noise if other else data[sid]
        window = window_at(source, ends[sid])
        forecast = rng.normal(size=HORIZON)
        batch.append((sid, window, forecast))
        reference.add(sid, window, forecast)
        if len(batch) == request_size:
            send()
    if batch:
        send()
    totals = realized.totals()
    reference.assert_matches(totals)
    assert totals.tracked_series == len(reference.last) <= max_series
    assert totals.evicted_series == reference.evicted


class LruReference(Reference):
    def __init__(self, max_series: int):
        super().__init__()
        self.max_series = max_series
        self.evicted = 0

    def add(self, sid, window, forecast, intervals=None):
        if sid in self.last:
            self.last[sid] = self.last.pop(sid)  # most recently used
        elif len(self.last) >= self.max_series:
            del self.last[next(iter(self.last))]
            self.evicted += 1
        super().add(sid, window, forecast, intervals)


# -------------------------------------------------------------------------------------------
# Bounded memory
# -------------------------------------------------------------------------------------------


def test_the_least_recently_used_series_is_dropped_past_the_cap():
    rows = {sid: series_rows(40, seed=i) for i, sid in enumerate("abcd")}
    realized = tracker(max_series=3)
    f = np.zeros((1, HORIZON))
    for sid in "abc":
        realized.submit([sid], window_at(rows[sid], 20)[None], f)
    realized.submit(["a"], window_at(rows["a"], 21)[None], f)  # a is now the most recent
    realized.submit(["d"], window_at(rows["d"], 20)[None], f)  # evicts b, the least recent
    realized.submit(["b"], window_at(rows["b"], 21)[None], f)  # new again; evicts c
    realized.submit(["a"], window_at(rows["a"], 22)[None], f)  # still tracked
    totals = realized.totals()
    assert totals.windows == {"continued": 2, "restarted": 0, "new": 5}
    assert totals.tracked_series == 3
    assert totals.evicted_series == 2


def test_slots_grow_beyond_the_initial_allocation_and_keep_their_series():
    rows = series_rows(3000 + WINDOW)
    realized = tracker(max_series=2500)
    f = np.zeros((3000, HORIZON))
    ids = [f"s{i}" for i in range(3000)]
    first = np.stack([window_at(rows, WINDOW - 1 + i) for i in range(3000)])
    second = np.stack([window_at(rows, WINDOW + i) for i in range(3000)])
    realized.submit(ids, first, f)
    realized.submit(ids[500:], second[500:], f[500:])  # the 2,500 still tracked
    realized.submit(ids[:1], second[:1], f[:1])  # evicted by s2500..s2999: new again
    totals = realized.totals()
    assert totals.tracked_series == 2500
    assert totals.evicted_series == 501
    assert totals.windows == {"continued": 2500, "restarted": 0, "new": 3001}


def test_windows_beyond_the_pending_limit_are_dropped_not_queued():
    rows = series_rows(40)
    realized = tracker(max_pending_windows=2)
    f = np.zeros((1, HORIZON))
    for end in (20, 21, 22):
        realized.submit(["s"], window_at(rows, end)[None], f)
    totals = realized.totals()
    assert totals.dropped_windows == 1
    assert totals.windows == {"continued": 1, "restarted": 0, "new": 1}


def test_a_batch_that_fails_to_score_is_dropped_and_logged_not_raised(caplog):
    rows = series_rows(40)
    realized = tracker()
    f = np.zeros((1, HORIZON))
    realized.submit(["s"], np.zeros((1, WINDOW + 1, FEATURES), np.float32), f)  # wrong shape
    totals = realized.totals()  # what a scrape calls: it must not raise
    assert totals.windows == {"continued": 0, "restarted": 0, "new": 0}
    assert "scoring failed; 1 windows dropped" in caplog.text
    realized.submit(["s"], window_at(rows, 20)[None], f)
    realized.submit(["s"], window_at(rows, 21)[None], f)
    assert realized.totals().windows["continued"] == 1


def test_poll_scores_once_enough_windows_wait_or_the_oldest_waited_long_enough():
    rows = series_rows(40)
    now = [0.0]
    realized = tracker(flush_windows=3, max_delay=0.1, clock=lambda: now[0])
    f = np.zeros((1, HORIZON))
    realized.submit(["s"], window_at(rows, 20)[None], f)
    realized.submit(["s"], window_at(rows, 21)[None], f)
    realized.poll()  # 2 waiting, for 0 s
    assert realized.tracked_series == 0
    now[0] = 0.1
    realized.poll()  # the oldest has waited 0.1 s
    assert realized.tracked_series == 1
    for end in (22, 23, 24):
        realized.submit(["s"], window_at(rows, end)[None], f)
    realized.poll()  # 3 waiting
    assert realized.totals().windows["continued"] == 4


# -------------------------------------------------------------------------------------------
# Intervals
# -------------------------------------------------------------------------------------------


def test_interval_coverage_is_counted_per_level():
    rows = series_rows(80)
    rng = np.random.default_rng(5)
    realized, reference = tracker(), Reference()
    levels = (80.0, 95.0)
    for end in range(WINDOW - 1, 80, 2):  # k = 2: steps 1 and 2 scored
        forecast = rng.normal(size=HORIZON)
        half = np.abs(rng.normal(size=(2, HORIZON))) * [[0.5], [1.5]]
        lower, upper = forecast - half, forecast + half
        window = window_at(rows, end)
        realized.submit(
            ["s"], window[None], forecast[None], levels=levels, lower=lower[None], upper=upper[None]
        )
        reference.add(
            "s", window, forecast, {lv: (lower[i], upper[i]) for i, lv in enumerate(levels)}
        )
    totals = realized.totals()
    reference.assert_matches(totals)
    assert set(totals.intervals) == {"80", "95"}
    for level in levels:
        tally = totals.intervals[f"{level:g}"]
        assert tally.scored == reference.scored[level] == totals.values
        assert tally.covered == reference.covered[level]
    assert 0 < totals.intervals["80"].covered < totals.intervals["95"].covered
    assert totals.nominal == {"80": 0.8, "95": 0.95}


def test_windows_without_intervals_score_no_interval_and_infinite_bounds_cover():
    rows = series_rows(40)
    realized = tracker(levels=(50.0,))
    f = np.zeros((1, HORIZON))
    inf = np.full((1, 1, HORIZON), np.inf)
    realized.submit(["s"], window_at(rows, 20)[None], f, levels=(99.5,), lower=-inf, upper=inf)
    realized.submit(["s"], window_at(rows, 21)[None], f)  # scores the 99.5 interval
    realized.submit(["s"], window_at(rows, 22)[None], f)  # had none: scores none
    totals = realized.totals()
    assert totals.values == 2
    assert totals.intervals["99.5"].scored == totals.intervals["99.5"].covered == 1
    assert totals.intervals["50"].scored == 0  # created upfront, never requested


def test_level_labels_name_every_distinct_level():
    """Levels that differ as float32 never share a label (their tallies would merge), and a
    level below 100 is never labelled "100"."""
    close = float(np.nextafter(np.float32(80.1), np.float32(100)))
    labels = [level_label(v) for v in (80.0, 95.0, 80.1, close, 99.99999, 2.5)]

    assert labels[:2] == ["80", "95"]
    assert len(set(labels)) == len(labels), labels
    assert labels[4] != "100" and float(labels[4]) < 100


def test_level_labels_are_capped():
    rows = series_rows(40)
    realized = tracker()
    levels = [float(10 + 5 * i) for i in range(MAX_LEVEL_LABELS + 3)]
    f = np.zeros((1, HORIZON))
    for end, start in zip(range(20, 30), range(0, len(levels), MAX_WINDOW_LEVELS), strict=False):
        chosen = levels[start : start + MAX_WINDOW_LEVELS]
        bounds = np.zeros((1, len(chosen), HORIZON))
        realized.submit(
            ["s"], window_at(rows, end)[None], f, levels=chosen, lower=bounds, upper=bounds
        )
    assert len(realized.totals().intervals) == MAX_LEVEL_LABELS


# -------------------------------------------------------------------------------------------
# Metrics
# -------------------------------------------------------------------------------------------


def test_metrics_export_the_totals_as_counters_on_a_fresh_registry():
    registry = CollectorRegistry()
    realized = tracker(levels=(80.0,))
    RealizedAccuracyMetrics(registry, realized.totals)
    rows = series_rows(40)
    forecast = np.array([[1.0, 2.0, 3.0]])
    bounds = np.full((1, 1, HORIZON), 100.0)
    realized.submit(["s"], window_at(rows, 20)[None], forecast, levels=(80,), lower=-bounds,
                    upper=bounds)  # fmt: skip
    realized.submit(["s"], window_at(rows, 22)[None], forecast)
    get = registry.get_sample_value  # read after a flush: the scrape scores what waits
    actual = rows[21:23, TARGET].astype(np.float64)
    assert get("forecast_realized_values_total") == 2
    assert get("forecast_realized_abs_error_total") == pytest.approx(
        np.abs(forecast[0, :2] - actual).sum()
    )
    assert get("forecast_realized_persistence_abs_error_total") == pytest.approx(
        np.abs(rows[20, TARGET] - actual).sum()
    )
    assert get("forecast_realized_squared_error_total") == pytest.approx(
        ((forecast[0, :2] - actual) ** 2).sum()
    )
    assert get("forecast_interval_scored_total", {"level": "80"}) == 2
    assert get("forecast_interval_covered_total", {"level": "80"}) == 2
    assert get("forecast_interval_nominal_coverage_ratio", {"level": "80"}) == 0.8
    assert get("forecast_realized_windows_total", {"outcome": "continued"}) == 1
    assert get("forecast_realized_windows_total", {"outcome": "new"}) == 1
    assert get("forecast_realized_windows_total", {"outcome": "restarted"}) == 0
    assert get("forecast_realized_tracked_series") == 1
    assert get("forecast_realized_evicted_series_total") == 0
    assert get("forecast_realized_dropped_windows_total") == 0
