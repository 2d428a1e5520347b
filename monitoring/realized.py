"""Realized accuracy: forecasts scored against the values that later arrive, series by series.

A client that sends each series' windows in time order, tagged with the series' id, gets its
forecasts scored for free: each new window of a series holds the outcomes of the forecasts made
from the one before.

**Continuation.** A window of series S *continues* the last window tracked for S when its first
``window - k`` rows equal that window's last ``window - k`` rows, for some ``1 <= k < window``:
the series moved on by ``k`` rows. The earlier forecasts of steps ``1 .. min(k, horizon)`` then
have their actual values in the new window (step ``j`` is the target at row
``window - 1 - k + j``) and are scored, together with the earlier window's persistence forecast
(its last target value, for every step) and its intervals, if any. When several ``k`` fit (a
series that repeats itself exactly), the smallest wins. A window that continues nothing starts
its series over: it replaces what was tracked and nothing is scored.

**Rows are compared by hash.** Each row's float32 bit patterns (``-0.0`` read as ``0.0``) go
through a multilinear hash (64-bit random multipliers, the high 32 bits kept), so two different
rows share a hash with probability about ``2**-32``; a continuation needs every one of its
``window - k`` overlapping rows to match.

**Memory.** A tracked series costs a fixed slot whatever its traffic: the hashes of the last
window's rows ``1 .. window-1`` (row 0 is never compared again) as uint32, that window's
forecasts and last target value as float32 (exactly what the client received), and, once any
client asks for intervals, the bounds of up to :data:`MAX_WINDOW_LEVELS` levels. The slots are
rows of numpy arrays that grow by doubling up to ``max_series``; past it, the least recently
used series is dropped. An ordered dict maps series ids to slots.

**Threads.** :meth:`RealizedAccuracy.submit` is all the request path does: it appends to a
deque. Matching and scoring happen in :meth:`RealizedAccuracy.flush`, on the service's
monitoring thread (or at a scrape), over everything submitted so far, in submission order: a
series' windows are matched in the order they were submitted.

This module receives numbers only: no gRPC, no Prometheus (``monitoring.metrics`` exports
:class:`RealizedTotals`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat

import numpy as np

from monitoring.monitor import MAX_DELAY_SECONDS

log = logging.getLogger(__name__)

DEFAULT_MAX_SERIES = 100_000
# Distinct interval levels with their own `level` label; intervals at further levels are not
# scored (the label set stays bounded whatever clients ask for).
MAX_LEVEL_LABELS = 16
# Levels of one window whose intervals are kept until the next window; a request asking for
# more has only its first MAX_WINDOW_LEVELS levels scored.
MAX_WINDOW_LEVELS = 8
# The monitoring thread scores once this many windows wait, or once the oldest waited
# MAX_DELAY_SECONDS (as the detectors update); a scrape scores everything first.
FLUSH_WINDOWS = 2048
# Beyond this many windows waiting to be scored, new ones are not tracked (counted as dropped):
# the request path never waits for scoring, and memory stays bounded if scoring falls behind.
MAX_PENDING_WINDOWS = 1 << 16
# Outcomes of a tracked window (the `outcome` label of forecast_realized_windows_total).
OUTCOMES = ("continued", "restarted", "new")

# Windows scored together. A flush goes chunk by chunk, in order, through fixed buffers: fresh
# large arrays on every flush cost a page fault per 4 KiB, which measured more than the scoring.
CHUNK_WINDOWS = 256
_INITIAL_SLOTS = 1024
_HASH_SEED = 0x5EED_F0CA
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # of a uint64 seen as two uint32


def level_label(level: float) -> str:
    """The ``level`` label of an interval level in percent: ``80.0`` -> ``"80"``, ``80.1`` ->
    ``"80.1"``; every distinct float32 level gets a distinct label (``99.99999`` is not
    ``"100"``)."""
    return str(np.format_float_positional(np.float32(level), trim="-"))


@dataclass(frozen=True)
class IntervalTally:
    scored: int  # actual values that had an interval at this level
    covered: int  # ... and fell inside it (bounds included)


@dataclass(frozen=True)
class RealizedTotals:
    """Everything scored since start-up (monotonic, so Prometheus counters sum across
    replicas): forecast values scored and their error sums in target units."""

    values: int = 0
    abs_error: float = 0.0
    persistence_abs_error: float = 0.0
    squared_error: float = 0.0
    intervals: dict[str, IntervalTally] = field(default_factory=dict)  # by level label
    nominal: dict[str, float] = field(default_factory=dict)  # level label -> level / 100
    windows: dict[str, int] = field(default_factory=dict)  # by outcome (OUTCOMES)
    tracked_series: int = 0
    evicted_series: int = 0
    dropped_windows: int = 0


@dataclass(slots=True, eq=False)
class _Submission:
    """One request's windows (or a slice of them), as handed over by the request path."""

    series_ids: Sequence[str]
    windows: np.ndarray  # [n, window, features] float32, as received
    forecasts: np.ndarray  # [n, horizon]
    levels: tuple[float, ...] = ()
    lower: np.ndarray | None = None  # [n, len(levels), horizon]
    upper: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.series_ids)

    def part(self, lo: int, hi: int) -> _Submission:
        if lo == 0 and hi >= len(self):
            return self
        return _Submission(
            self.series_ids[lo:hi],
            self.windows[lo:hi],
            self.forecasts[lo:hi],
            self.levels,
            None if self.lower is None else self.lower[lo:hi],
            None if self.upper is None else self.upper[lo:hi],
        )

    @property
    def has_intervals(self) -> bool:
        return bool(self.levels) and self.lower is not None and self.upper is not None


def _chunks(batch: list[_Submission], size: int) -> Iterator[list[_Submission]]:
    """The submissions' windows in order, cut into chunks of at most ``size`` windows."""
    chunk: list[_Submission] = []
    filled = 0
    for submission in batch:
        lo = 0
        while lo < len(submission):
            hi = min(len(submission), lo + size - filled)
            chunk.append(submission.part(lo, hi))
            filled += hi - lo
            lo = hi
            if filled == size:
                yield chunk
                chunk, filled = [], 0
    if chunk:
        yield chunk


class RowHasher:
    """Row hashes of up to ``capacity`` windows at a time, into buffers of its own (the results
    are views, valid until the next call).

    A row's hash is the high half of ``sum_f m_f * bits_f (mod 2**64)`` over its features'
    float32 bit patterns, with random 64-bit ``m_f``: Lemire's multilinear family for 32-bit
    inputs (without its additive key, which two hashes being compared share), so two different
    rows collide with probability about ``2**-32``."""

    def __init__(self, *, window: int, n_features: int, capacity: int):
        rng = np.random.default_rng(_HASH_SEED)
        self._multipliers = [np.uint64(m) for m in rng.integers(0, 2**64, n_features, np.uint64)]
        self._values = np.empty((capacity, window, n_features), np.float32)
        self._columns = np.empty((n_features, capacity * window), np.uint64)
        self._sum = np.empty(capacity * window, np.uint64)
        self._term = np.empty(capacity * window, np.uint64)
        self._hashes = np.empty((capacity, window), np.uint32)

    def rows(self, parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``parts``: windows ``[n_i, window, features]``, at most ``capacity`` in all ->
        (row hashes ``[n, window]`` uint32, the windows ``[n, window, features]`` float32 with
        ``-0.0`` read as ``0.0``)."""
        n = sum(len(part) for part in parts)
        values = self._values[:n]
        np.concatenate(parts, out=values)
        values += np.float32(0.0)  # -0.0 -> 0.0: equal floats, equal hashes
        rows = n * values.shape[1]
        # Each feature's bit patterns as a contiguous uint64 column: the products below are
        # then plain vector operations (strided ones measured 20 % slower).
        columns = self._columns[:, :rows]
        np.copyto(columns, values.reshape(rows, -1).view(np.uint32).T)
        total, term = self._sum[:rows], self._term[:rows]
        np.multiply(columns[0], self._multipliers[0], out=total)
        for f in range(1, len(self._multipliers)):
            np.multiply(columns[f], self._multipliers[f], out=term)
            total += term
        hashes = self._hashes[:n]
        hashes[:] = total.view(np.uint32)[_HIGH_HALF::2].reshape(n, -1)
        return hashes, values


class _Slots:
    """The tracked series: an LRU map from series id to a slot, and per slot the last window's
    row hashes (rows 1..window-1), forecasts, last target value and interval bounds."""

    def __init__(self, *, window: int, horizon: int, max_series: int) -> None:
        self.max_series = max_series
        self.index: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.evicted = 0
        capacity = min(_INITIAL_SLOTS, max_series)
        self.hashes = np.zeros((capacity, window - 1), np.uint32)
        self.forecasts = np.zeros((capacity, horizon), np.float32)
        self.last = np.zeros(capacity, np.float32)
        # Allocated with the first interval: label index per kept level (-1: none), bounds.
        self.level_ids: np.ndarray | None = None  # [slots, MAX_WINDOW_LEVELS] int8
        self.bounds: np.ndarray | None = None  # [slots, MAX_WINDOW_LEVELS, 2, horizon]

    def __len__(self) -> int:
        return len(self.index)

    def find(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The slot of each id (distinct ids, at most ``max_series``), made the most recently
        used in turn, and whether it was tracked before: as if looked up one after the other.
        A new id takes a free slot or the least recently used one."""
        index = self.index
        slots = np.fromiter(map(index.get, ids, repeat(-1)), np.intp, len(ids))
        known = slots >= 0
        if known.all():  # the usual case: every series tracked already
            deque(map(index.move_to_end, ids), maxlen=0)
            return slots, known
        # A new series may evict one looked up later in the list: one by one.
        for n, sid in enumerate(ids):
            slot = index.get(sid)
            if slot is None:
                slots[n] = self._take(sid)
                known[n] = False
            else:
                index.move_to_end(sid)
                slots[n] = slot
                known[n] = True
        return slots, known

    def _take(self, sid: str) -> int:
        if len(self.index) >= self.max_series:
            _, slot = self.index.popitem(last=False)
            self.evicted += 1
        else:
            slot = len(self.index)
            if slot >= len(self.last):
                self._grow()
        self.index[sid] = slot
        return slot

    def with_intervals(self, levels: int, horizon: int) -> None:
        if self.level_ids is None:
            self.level_ids = np.full((len(self.last), levels), -1, np.int8)
            self.bounds = np.zeros((len(self.last), levels, 2, horizon), np.float32)

    def _grow(self) -> None:
        capacity = min(2 * len(self.last), self.max_series)

        def grown(array: np.ndarray, fill: int = 0) -> np.ndarray:
            bigger = np.full((capacity, *array.shape[1:]), fill, array.dtype)
            bigger[: len(array)] = array
            return bigger

        self.hashes = grown(self.hashes)
        self.forecasts = grown(self.forecasts)
        self.last = grown(self.last)
        if self.level_ids is not None and self.bounds is not None:
            self.level_ids = grown(self.level_ids, -1)
            self.bounds = grown(self.bounds)


class RealizedAccuracy:
    """Tracks the last window of up to ``max_series`` series and scores the forecasts made from
    it when the series continues."""

    def __init__(
        self,
        *,
        window: int,
        horizon: int,
        n_features: int,
        target_index: int,
        max_series: int = DEFAULT_MAX_SERIES,
        levels: Sequence[float] = (),
        flush_windows: int = FLUSH_WINDOWS,
        max_delay: float = MAX_DELAY_SECONDS,
        max_pending_windows: int = MAX_PENDING_WINDOWS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``levels``: interval levels (percent) whose labels exist from the start."""
        if window < 2:
            raise ValueError("a window needs at least 2 rows to be continued")
        if max_series < 1:
            raise ValueError("max_series must be >= 1")
        self.window = window
        self.horizon = horizon
        self.max_delay = max_delay
        self._flush_windows = max(1, flush_windows)
        self._max_pending = max_pending_windows
        self._clock = clock
        # The request path's side: a deque (appends are atomic) and counts only it writes.
        self._inbox: deque[_Submission] = deque()
        self._submitted = 0
        self._dropped = 0
        # Everything below is touched under the lock only.
        self._lock = threading.Lock()
        self._taken = 0
        self._pending_since: float | None = None
        self.target_index = target_index
        self._hasher = RowHasher(window=window, n_features=n_features, capacity=CHUNK_WINDOWS)
        self._slots = _Slots(window=window, horizon=horizon, max_series=max_series)
        self._labels: dict[float, int] = {}  # level -> label index
        self._warned_levels = False
        self._values = 0
        self._abs = 0.0
        self._persistence_abs = 0.0
        self._squared = 0.0
        self._scored = np.zeros(MAX_LEVEL_LABELS, np.int64)
        self._covered = np.zeros(MAX_LEVEL_LABELS, np.int64)
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        for level in levels:
            self._label(float(level))

    @property
    def max_series(self) -> int:
        return self._slots.max_series

    @property
    def tracked_series(self) -> int:
        return len(self._slots)

    # ---- the request path ----------------------------------------------------------------

    def submit(
        self,
        series_ids: Sequence[str],
        windows: np.ndarray,
        forecasts: np.ndarray,
        *,
        levels: Sequence[float] = (),
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> None:
        """Queue one request's windows ``[n, window, features]`` (raw, as received) with their
        forecasts ``[n, horizon]`` and, optionally, intervals ``lower``/``upper``
        ``[n, len(levels), horizon]``. An empty id leaves its window untracked.

        Called from one thread (the event loop); O(1), it never waits for scoring. The arrays
        are kept by reference until scored: do not modify them afterwards."""
        n = len(series_ids)
        if self._submitted - self._taken + n > self._max_pending:
            self._dropped += n
            return
        self._inbox.append(_Submission(series_ids, windows, forecasts, tuple(levels), lower, upper))
        self._submitted += n

    # ---- the monitoring thread -------------------------------------------------------------

    def poll(self) -> None:
        """Score what waits if enough does, or if the oldest has waited ``max_delay``."""
        pending = self._submitted - self._taken
        if not pending:
            return
        with self._lock:
            now = self._clock()
            if self._pending_since is None:
                self._pending_since = now
            if pending >= self._flush_windows or now - self._pending_since >= self.max_delay:
                self._flush()

    def flush(self) -> None:
        """Score everything submitted so far."""
        with self._lock:
            self._flush()

    def totals(self) -> RealizedTotals:
        """Everything scored so far, after scoring what waits (a scrape calls this)."""
        with self._lock:
            self._flush()
            names = {index: level_label(level) for level, index in self._labels.items()}
            return RealizedTotals(
                values=self._values,
                abs_error=self._abs,
                persistence_abs_error=self._persistence_abs,
                squared_error=self._squared,
                intervals={
                    name: IntervalTally(int(self._scored[i]), int(self._covered[i]))
                    for i, name in names.items()
                },
                nominal={level_label(level): level / 100.0 for level in self._labels},
                windows=dict(self._outcomes),
                tracked_series=len(self._slots),
                evicted_series=self._slots.evicted,
                dropped_windows=self._dropped,
            )

    # ---- scoring (under the lock) ----------------------------------------------------------

    def _flush(self) -> None:
        batch: list[_Submission] = []
        try:
            while True:
                batch.append(self._inbox.popleft())
        except IndexError:
            pass
        self._pending_since = None
        if not batch:
            return
        windows = sum(len(s) for s in batch)
        self._taken += windows
        done = 0
        try:
            for chunk in _chunks(batch, CHUNK_WINDOWS):
                self._score_chunk(chunk)
                done += sum(len(part) for part in chunk)
        except Exception:  # noqa: BLE001 - a scoring failure must not fail the scrape
            self._dropped += windows - done
            log.exception("realized accuracy: scoring failed; %d windows dropped", windows - done)

    def _score_chunk(self, chunk: list[_Submission]) -> None:
        ids = list(chain.from_iterable(part.series_ids for part in chunk))
        forecasts = np.concatenate([part.forecasts for part in chunk], dtype=np.float32)
        level_ids, bounds = self._intervals(chunk)
        hashes, values = self._hasher.rows([part.windows for part in chunk])
        store = self._slots
        for rows in self._rounds(ids):
            every = len(rows) == len(ids)  # the usual round: the whole chunk, in order
            slots, known = store.find(ids if every else [ids[i] for i in rows.tolist()])
            new = hashes if every else hashes[rows]
            if known.all():
                self._score(rows, slots, new, values)
            elif known.any():
                self._score(rows[known], slots[known], new[known], values)
            self._outcomes["new"] += int(len(rows) - known.sum())
            # Each window is now its series' last.
            store.hashes[slots] = new[:, 1:]
            store.forecasts[slots] = forecasts if every else forecasts[rows]
            store.last[slots] = values[rows, -1, self.target_index]
            if store.level_ids is not None and store.bounds is not None:
                store.level_ids[slots] = -1 if level_ids is None else level_ids[rows]
                if bounds is not None:
                    store.bounds[slots] = bounds[rows]

    def _rounds(self, ids: list[str]) -> Iterator[np.ndarray]:
        """Indices of the tracked windows in order, cut into consecutive rounds in which no
        series appears twice and of at most ``max_series`` windows: scoring round by round is
        scoring window by window (each round looks series up once, and no window of a round
        evicts another's series)."""
        distinct = set(ids)
        if len(distinct) == len(ids) and "" not in distinct:  # the usual case: one round
            rounds = [np.arange(len(ids))]
        else:
            rounds = []
            current: list[int] = []
            seen: set[str] = set()
            for i, sid in enumerate(ids):
                if not sid:
                    continue
                if sid in seen:
                    rounds.append(np.array(current))
                    current, seen = [], set()
                current.append(i)
                seen.add(sid)
            if current:
                rounds.append(np.array(current))
        for rows in rounds:
            for lo in range(0, len(rows), self.max_series):
                yield rows[lo : lo + self.max_series]

    def _score(
        self, rows: np.ndarray, slots: np.ndarray, new: np.ndarray, values: np.ndarray
    ) -> None:
        """Score those of the windows ``values[rows]`` (row hashes ``new``) that continue their
        series' last window, kept in ``slots``."""
        shift = self._match(self._slots.hashes[slots], new)
        continued = shift > 0
        n_continued = int(continued.sum())
        self._outcomes["continued"] += n_continued
        self._outcomes["restarted"] += len(rows) - n_continued
        if not n_continued:
            return
        rows, slots, k = rows[continued], slots[continued], shift[continued]
        steps = np.arange(1, self.horizon + 1)
        arrived = steps[None, :] <= k[:, None]  # [n, horizon]: the steps now known
        at = np.minimum((self.window - 1 - k)[:, None] + steps[None, :], self.window - 1)
        actual = values[rows[:, None], at, self.target_index].astype(np.float64)
        error = (self._slots.forecasts[slots].astype(np.float64) - actual)[arrived]
        persistence = (self._slots.last[slots].astype(np.float64)[:, None] - actual)[arrived]
        self._values += len(error)
        self._abs += float(np.abs(error).sum())
        self._persistence_abs += float(np.abs(persistence).sum())
        self._squared += float(error @ error)
        if self._slots.level_ids is not None:
            self._score_intervals(slots, actual, arrived)

    def _score_intervals(self, slots: np.ndarray, actual: np.ndarray, arrived: np.ndarray) -> None:
        level_ids, all_bounds = self._slots.level_ids, self._slots.bounds
        assert level_ids is not None and all_bounds is not None
        labels = level_ids[slots].astype(np.intp)  # [n, levels]
        counted = (labels >= 0)[:, :, None] & arrived[:, None, :]  # [n, levels, horizon]
        if not counted.any():
            return
        bounds = all_bounds[slots]  # [n, levels, 2, horizon]
        value = actual[:, None, :]
        inside = (bounds[:, :, 0, :] <= value) & (value <= bounds[:, :, 1, :])
        label = np.broadcast_to(labels[:, :, None], counted.shape)[counted]
        self._scored += np.bincount(label, minlength=MAX_LEVEL_LABELS)
        self._covered += np.bincount(label[inside[counted]], minlength=MAX_LEVEL_LABELS)

    def _match(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The shift ``k`` by which each new window continues its old one, 0 for none.

        ``old`` ``[n, window-1]``: hashes of the old windows' rows 1..window-1; ``new``
        ``[n, window]``: hashes of the new windows' rows. New row ``c`` must equal old row
        ``c + k`` for every ``c < window - k``."""
        w = self.window
        # k = 1, the usual case: old row c + 1 is stored at column c.
        shift = np.where((old == new[:, : w - 1]).all(axis=1), 1, 0)
        rest = np.flatnonzero(shift == 0)
        if not len(rest):
            return shift
        old, new = old[rest], new[rest]
        # Candidates for k >= 2: the new rows j <= w - 3 equal to the old last row (k = w-1-j),
        # tried from the smallest k.
        candidates = new[:, : w - 2] == old[:, -1:]
        todo = np.flatnonzero(candidates.any(axis=1))
        columns = np.arange(w - 1)[None, :]
        while len(todo):
            j = (w - 3) - np.argmax(candidates[todo, ::-1], axis=1)
            k = (w - 1) - j
            at = columns + (k - 1)[:, None]  # old row c + k is stored at column c + k - 1
            beyond = at > w - 2  # rows c >= w - k lie past the overlap
            same = np.take_along_axis(old[todo], np.minimum(at, w - 2), axis=1) == new[todo, :-1]
            ok = (same | beyond).all(axis=1)
            shift[rest[todo[ok]]] = k[ok]
            candidates[todo, j] = False
            failed = todo[~ok]
            todo = failed[candidates[failed].any(axis=1)]
        return shift

    # ---- interval labels -------------------------------------------------------------------

    def _label(self, level: float) -> int:
        """The label index of ``level``, or -1 once MAX_LEVEL_LABELS labels exist."""
        index = self._labels.get(level)
        if index is not None:
            return index
        if not (0.0 < level < 100.0) or len(self._labels) >= MAX_LEVEL_LABELS:
            if not self._warned_levels:
                log.warning(
                    "interval level %s not scored: only %d distinct levels in (0, 100) get a "
                    "label (%s)",
                    level,
                    MAX_LEVEL_LABELS,
                    ", ".join(level_label(lv) for lv in self._labels),
                )
                self._warned_levels = True
            return -1
        self._labels[level] = index = len(self._labels)
        return index

    def _intervals(self, chunk: list[_Submission]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per window of the chunk: label indices ``[n, MAX_WINDOW_LEVELS]`` (-1: none) and
        bounds ``[n, MAX_WINDOW_LEVELS, 2, horizon]`` float32; (None, None) when no window of
        the chunk has intervals."""
        if not any(part.has_intervals for part in chunk):
            return None, None
        n = sum(len(part) for part in chunk)
        ids = np.full((n, MAX_WINDOW_LEVELS), -1, np.int8)
        bounds = np.zeros((n, MAX_WINDOW_LEVELS, 2, self.horizon), np.float32)
        at = 0
        for part in chunk:
            if part.lower is not None and part.upper is not None and part.levels:
                kept = part.levels[:MAX_WINDOW_LEVELS]
                span = slice(at, at + len(part))
                ids[span, : len(kept)] = [self._label(float(level)) for level in kept]
                bounds[span, : len(kept), 0] = part.lower[:, : len(kept)]
                bounds[span, : len(kept), 1] = part.upper[:, : len(kept)]
            at += len(part)
        self._slots.with_intervals(MAX_WINDOW_LEVELS, self.horizon)
        return ids, bounds
