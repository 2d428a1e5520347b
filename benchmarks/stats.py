"""Figures of one measurement point, from raw latencies merged over every client process."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 99)

# The keys every point carries; the smoke test checks them.
FIGURE_KEYS = (
    "requests",
    "windows",
    "errors",
    "requests_per_s",
    "windows_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "max_ms",
)


def summarize(
    latencies: np.ndarray, *, windows_per_request: int, seconds: float, errors: int = 0
) -> dict:
    """Throughput over ``seconds`` and latency percentiles (ms) of the successful calls.

    Failed calls are not throughput; they are counted in ``errors``. With no successful call the
    latency figures are ``None`` (JSON null), never a made-up number.
    """
    n = int(len(latencies))
    figures: dict = {
        "requests": n,
        "windows": n * windows_per_request,
        "errors": int(errors),
        "requests_per_s": n / seconds,
        "windows_per_s": n * windows_per_request / seconds,
    }
    if n:
        ms = np.asarray(latencies, dtype=np.float64) * 1e3
        for p, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True):
            figures[f"p{p}_ms"] = float(value)
        figures["mean_ms"] = float(ms.mean())
        figures["max_ms"] = float(ms.max())
    else:
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms"):
            figures[key] = None
    return figures


def per_second_cv(completions: np.ndarray, seconds: float) -> float | None:
    """Coefficient of variation of the completions per whole second of the window: how steady
    the throughput was (None for windows shorter than 2 s)."""
    whole = int(seconds)
    if whole < 2:
        return None
    counts = np.bincount(np.floor(completions[completions < whole]).astype(int), minlength=whole)
    mean = counts.mean()
    return float(counts.std() / mean) if mean > 0 else None
