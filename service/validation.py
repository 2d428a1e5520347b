"""The request checks every protocol shares: window counts, finite values, interval levels and
series ids. Plain numbers in; :class:`InvalidWindow` / :class:`InvalidRequest` with a message
safe to show a client out. No protobuf: each protocol's conversion module calls these."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.errors import InvalidRequest, InvalidWindow

MAX_LEVELS = 8
"""Interval levels one request may ask for."""
MAX_SERIES_ID_BYTES = 256
"""The longest series id, in UTF-8 bytes."""


def check_window_count(count: int, max_windows: int) -> None:
    """At least one window, at most ``max_windows``."""
    if count == 0:
        raise InvalidWindow("request has no windows")
    if count > max_windows:
        raise InvalidWindow(f"request has {count} windows; the limit is {max_windows}")


def check_finite(windows: np.ndarray) -> None:
    """Every value of ``windows`` ``[n, ...]`` finite; the message names the first bad window."""
    flat = windows.reshape(len(windows), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        kind = "NaN" if np.isnan(flat[bad]).any() else "Inf"
        raise InvalidWindow(f"window {bad}: contains {kind}; impute missing values first")


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Interval levels (percent), checked: at most :data:`MAX_LEVELS`, each in (0, 100), none
    repeated. Empty when none are asked for.

    Raises :class:`InvalidRequest` naming the offending level."""
    levels = tuple(levels)
    if len(levels) > MAX_LEVELS:
        raise InvalidRequest(f"request has {len(levels)} levels; the limit is {MAX_LEVELS}")
    seen: set[float] = set()
    for level in levels:
        if math.isnan(level):
            raise InvalidRequest("level NaN is not a number; levels are percent in (0, 100)")
        if not 0 < level < 100:
            raise InvalidRequest(f"level {level:g} is outside (0, 100); levels are percent")
        if level in seen:
            raise InvalidRequest(f"level {level:g} is repeated")
        seen.add(level)
    return levels


def series_id_too_long(series_id: str) -> int | None:
    """The id's size in UTF-8 bytes when it is over :data:`MAX_SERIES_ID_BYTES`, else None."""
    # A character is at most 4 UTF-8 bytes: only longer strings need encoding.
    if len(series_id) * 4 <= MAX_SERIES_ID_BYTES:
        return None
    size = len(series_id.encode())
    return size if size > MAX_SERIES_ID_BYTES else None
