"""Exponentially weighted statistics of a vector stream, updated a batch at a time in O(1) memory.

Each sample's weight decays by ``1 - alpha`` per later sample, so the statistics follow the
recent stream with a half-life of ``halflife`` samples. Weights are normalised (the estimate is
unbiased from the first sample on), and the variance update merges the decayed old state with
the batch around the *new* mean (West's weighted update): no E[x^2] - E[x]^2 cancellation, so
it stays exact when the variance collapses towards zero.
"""

from __future__ import annotations

import numpy as np


def float32_tolerance(values: np.ndarray) -> np.ndarray:
    """Slack for values that arrive as float32 over gRPC but were float64 in training."""
    return 1e-5 * (1.0 + np.abs(values))


def alpha_for_halflife(halflife: float) -> float:
    return 1.0 - 0.5 ** (1.0 / halflife)


def _batch_weights(alpha: float, n: int, weight: float) -> tuple[np.ndarray, float, float]:
    """EW weights of ``n`` new samples (newest weighs most), the decayed weight of the old state,
    and the new total weight."""
    keep = 1.0 - alpha
    w = alpha * keep ** np.arange(n - 1, -1, -1, dtype=np.float64)
    old = keep**n * weight
    return w, old, old + w.sum()


class EWStats:
    def __init__(self, dim: int, halflife: float):
        self.alpha = alpha_for_halflife(halflife)
        self.mean = np.zeros(dim)
        self.var = np.zeros(dim)
        self.weight = 0.0  # total (decayed) weight seen, in (0, 1]
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        """``x``: ``[n, dim]``; rows in arrival order."""
        n = len(x)
        if n == 0:
            return
        w, old, total = _batch_weights(self.alpha, n, self.weight)
        batch_mean = w @ x / w.sum()
        mean = (old * self.mean + w.sum() * batch_mean) / total
        dev = x - mean
        self.var = (old * (self.var + (self.mean - mean) ** 2) + w @ (dev * dev)) / total
        self.mean = mean
        self.weight = total
        self.count += n


class EWHistogram:
    """Exponentially weighted bin fractions over fixed edges (for PSI)."""

    def __init__(self, edges: list[list[float]], halflife: float):
        self.alpha = alpha_for_halflife(halflife)
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self.fractions = [np.zeros(len(e) + 1) for e in self.edges]
        self.weight = 0.0
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        n = len(x)
        if n == 0:
            return
        w, old, total = _batch_weights(self.alpha, n, self.weight)
        for f, edges in enumerate(self.edges):
            bins = np.searchsorted(edges, x[:, f], side="right")
            added = np.bincount(bins, weights=w, minlength=len(edges) + 1)
            self.fractions[f] = (old * self.fractions[f] + added) / total
        self.weight = total
        self.count += n

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
