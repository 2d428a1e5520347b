"""Exponentially weighted statistics of a vector stream, updated a batch at a time in O(1) memory.

Each sample's weight decays by ``1 - alpha`` per later sample, so the statistics follow the
recent stream with a half-life of ``halflife`` samples. Weights are normalised (the estimate is
unbiased from the first sample on), and the variance update merges the decayed old state with
the batch around the *new* mean (West's weighted update): no E[x^2] - E[x]^2 cancellation, so
it stays exact when the variance collapses towards zero.

The updates run on the service's monitoring thread, which shares the GIL with the gRPC event
loop, so they are written for few numpy calls per batch: the weights of a batch come from a
table computed once, the weight sums from closed forms, and the histogram decays every
feature's bins in one operation.
"""

from __future__ import annotations

import numpy as np

# Batches up to this many samples take their weights from a precomputed table (a fixed size,
# so memory stays O(1) in the stream length); longer batches compute them. The prediction
# monitor sizes its updates from it (monitoring.monitor.UPDATE_EVERY).
WEIGHT_TABLE = 4096


def float32_tolerance(values: np.ndarray) -> np.ndarray:
    """Slack for values that arrive as float32 over gRPC but were float64 in training."""
    slack: np.ndarray = 1e-5 * (1.0 + np.abs(values))
    return slack


def alpha_for_halflife(halflife: float) -> float:
    return float(1.0 - 0.5 ** (1.0 / halflife))


class _Decay:
    """Weights of a batch of ``n`` new samples under per-sample decay ``1 - alpha``."""

    def __init__(self, halflife: float):
        self.alpha = alpha_for_halflife(halflife)
        self._log_keep = np.log1p(-self.alpha)
        # Oldest first: alpha * keep^(WEIGHT_TABLE-1), ..., alpha * keep^0.
        self._table = self.alpha * np.exp(self._log_keep * np.arange(WEIGHT_TABLE - 1, -1, -1.0))

    def batch(self, n: int) -> tuple[np.ndarray, float, float]:
        """The new samples' weights (newest weighs most), ``keep**n`` (the factor on the old
        state) and the sum of the new weights, ``1 - keep**n`` (exact for tiny alpha too)."""
        if n <= WEIGHT_TABLE:
            w = self._table[WEIGHT_TABLE - n :]
        else:
            w = self.alpha * np.exp(self._log_keep * np.arange(n - 1, -1, -1.0))
        x = n * self._log_keep
        return w, float(np.exp(x)), float(-np.expm1(x))


class EWStats:
    def __init__(self, dim: int, halflife: float):
        self._decay = _Decay(halflife)
        self.alpha = self._decay.alpha
        self.mean = np.zeros(dim)
        self.var = np.zeros(dim)
        self.weight = 0.0  # total (decayed) weight seen, in (0, 1]
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        """``x``: ``[n, dim]``; rows in arrival order."""
        n = len(x)
        if n == 0:
            return
        w, keep_n, w_sum = self._decay.batch(n)
        old = keep_n * self.weight
        total = old + w_sum
        mean = (old * self.mean + w @ x) / total
        dev = x - mean
        shift = self.mean - mean
        self.var = (old * (self.var + shift * shift) + w @ (dev * dev)) / total
        self.mean = mean
        self.weight = total
        self.count += n


class EWSlice:
    """Read-only view of some columns of an :class:`EWStats` (streams that share a half-life
    are updated together, in one call, and read apart)."""

    def __init__(self, stats: EWStats, columns: slice):
        self._stats = stats
        self._columns = columns

    @property
    def count(self) -> int:
        return self._stats.count

    @property
    def mean(self) -> np.ndarray:
        return self._stats.mean[self._columns]

    @property
    def var(self) -> np.ndarray:
        return self._stats.var[self._columns]


class EWHistogram:
    """Exponentially weighted bin fractions over fixed edges, one histogram per feature (for
    PSI). Bin ``k`` of a feature holds values ``v`` with ``edges[k-1] <= v < edges[k]``."""

    def __init__(self, edges: list[list[float]], halflife: float):
        self._decay = _Decay(halflife)
        self.alpha = self._decay.alpha
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        # Every feature's bins side by side in one flat vector, so the decay is one operation.
        self._bounds = np.cumsum([0] + [len(e) + 1 for e in self.edges])
        self._fractions = np.zeros(self._bounds[-1])
        self._added = np.empty_like(self._fractions)
        self.weight = 0.0
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        """``x``: ``[n, features]``; rows in arrival order."""
        n = len(x)
        if n == 0:
            return
        w, keep_n, w_sum = self._decay.batch(n)
        old = keep_n * self.weight
        total = old + w_sum
        # A binary search per value and a weighted count per feature: the cost per window
        # grows with log(edges), and a few features cost a few calls.
        columns = np.ascontiguousarray(x.T)
        for f, e in enumerate(self.edges):
            lo, hi = self._bounds[f], self._bounds[f + 1]
            bins = np.searchsorted(e, columns[f], side="right")
            self._added[lo:hi] = np.bincount(bins, weights=w, minlength=hi - lo)
        self._fractions = (old * self._fractions + self._added) / total
        self.weight = total
        self.count += n

    @property
    def fractions(self) -> list[np.ndarray]:
        """Per feature, the weighted share of each of its ``len(edges) + 1`` bins."""
        return np.split(self._fractions, self._bounds[1:-1])

    @property
    def effective_samples(self) -> float:
        """Kish's effective sample size of the EW weights seen so far."""
        if self.count == 0:
            return 0.0
        keep = 1.0 - self.alpha
        k = self.count
        s1 = 1.0 - keep**k
        s2 = (1.0 - keep ** (2 * k)) * self.alpha / (2.0 - self.alpha)
        return s1 * s1 / (s2 * 1.0)


def psi(actual: np.ndarray, expected: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two bin-fraction vectors (smoothed by ``eps``)."""
    a = np.maximum(actual, eps)
    e = np.maximum(expected, eps)
    a = a / a.sum()
    e = e / e.sum()
    return float(np.sum((a - e) * np.log(a / e)))
