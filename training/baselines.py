"""Baseline forecasters every model is compared with, scored on the same points as the model.

INTERFACE STUB: the records below are the contract; ``score_baselines`` is being written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, kw_only=True)
class BaselineScore:
    """One baseline's one-step mean absolute errors (target units) on the model's points."""

    name: str  # persistence, seasonal_naive, persistence_seasonal_change, AutoETS, ...
    period: int | None  # the seasonal period it used, if any
    statistical: bool  # a fitted statistical model (AutoETS, AutoTheta, MSTL, AutoARIMA)
    val_mae: float
    test_mae: float
    seconds: float  # fitting and scoring time


@dataclass(frozen=True, kw_only=True)
class Baselines:
    periods: tuple[int, ...]  # seasonal periods detected on the training split
    scores: tuple[BaselineScore, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)  # baseline -> why it did not run


def score_baselines(
    target: np.ndarray,
    train_end: int,
    points: Mapping[str, np.ndarray],
    periods: tuple[int, ...],
    *,
    budget_seconds: float = 60.0,
) -> Baselines:
    raise NotImplementedError
