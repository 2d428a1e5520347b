"""The time axis of a CSV: which column it is, its regular step, and the missing timestamps.

A time column is found without being named (``--time-column`` overrides, ``none`` turns this
off) as the first of, in column order:

1. a column whose every value is an ISO-8601 date or date-time (``2024-05-01``,
   ``2024-05-01T13:30``, ``2024-05-01 13:30:00+02:00``; year-first dates with slashes,
   ``2024/05/01``, and 8-digit ``20240501`` in a column named like a time axis count too);
2. a column of strictly increasing integers named like a time axis (``ds``, ``date``, ``time``,
   ``timestamp``, ``datetime``, ``step``, ``index``, ``t``, ... in any case);
3. an unnamed first column of increasing integers (the index pandas writes).

Rows are then sorted by time; duplicated timestamps are refused. The step is the most common
gap, and every gap must be a whole number of steps (calendar months for monthly, quarterly and
yearly data). A missing timestamp becomes a row of missing values at its place on the grid, to
be imputed like any other gap: points far apart in time are never joined.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from training.errors import DataError

TIME_NAMES = frozenset(
    {
        "ds",
        "date",
        "dates",
        "time",
        "times",
        "timestamp",
        "timestamps",
        "datetime",
        "date_time",
        "step",
        "steps",
        "index",
        "idx",
        "t",
        "period",
        "week",
        "month",
        "year",
        "day",
        "hour",
        "minute",
        "tick",
    }
)
UNNAMED_INDEX = re.compile(r"^(|unnamed: ?0|index)$", re.IGNORECASE)
_SLASH_DATE = re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})")
_COMPACT_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class TimeAxis:
    """The time column of a series and its regular grid."""

    column: str
    kind: str  # "datetime" or "integer"
    step: str  # ISO-8601 duration ("PT30M", "P1D", "P1M") or an integer step ("1")
    reason: str  # why this column was taken to be the time axis
    start: str  # the first timestamp, as written in ISO-8601 or as an integer
    inserted: int  # missing timestamps filled with rows of missing values

    def describe(self) -> str:
        name = self.column or "the unnamed first column"
        return f"{name} (step {self.step}; {self.reason})"


@dataclass(frozen=True)
class Regular:
    """Where each data row goes on the regular grid, and the grid's description."""

    axis: TimeAxis
    positions: np.ndarray  # [rows] int, grid index of each row in file order
    length: int  # rows of the regular grid


def detect_time_column(
    header: Sequence[str], columns: dict[str, list[str]]
) -> tuple[str, str] | None:
    """``(column, reason)`` of the time axis among ``header``, or None (see the module doc)."""
    for name in header:
        if _all_dates(columns[name], name):
            if _all_integers(columns[name]):
                return name, "every value is an 8-digit YYYYMMDD date"
            return name, "every value is an ISO-8601 date or date-time"
    for name in header:
        cells = columns[name]
        if name.strip().lower() in TIME_NAMES and cells and _is_date(cells[0], name):
            # Its values are parsed strictly later: the first bad one is named then.
            return name, "named like a time axis, and its first value is a date"
    for name in header:
        if name.strip().lower() in TIME_NAMES and _strictly_increasing_integers(columns[name]):
            return name, "strictly increasing integers, named like a time axis"
    if (
        header
        and UNNAMED_INDEX.match(header[0].strip())
        and _increasing_integers(columns[header[0]])
    ):
        return header[0], "unnamed first column of increasing integers (a saved index)"
    return None


def regularize(column: str, reason: str, cells: Sequence[str]) -> Regular:
    """Parse ``cells`` (one per data row, in file order), find the step and place every row on
    the regular grid. Raises :class:`DataError` naming the first bad row or timestamp."""
    if _all_integers(cells) and not _compact_dates(cells, column):
        values = np.array([int(c) for c in cells], dtype=np.int64)
        return _integer_grid(column, reason, values, cells)
    moments = [_parse_moment(cell, column, row) for row, cell in enumerate(cells, start=1)]
    return _datetime_grid(column, reason, moments, cells)


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def _all_dates(cells: Sequence[str], name: str) -> bool:
    if not cells or any(not c for c in cells):
        return False
    if _all_integers(cells):
        return _compact_dates(cells, name)
    try:
        for row, cell in enumerate(cells, start=1):
            _parse_moment(cell, name, row)
    except DataError:
        return False
    return True


def _is_date(cell: str, name: str) -> bool:
    if _INTEGER.match(cell):
        return False
    try:
        _parse_moment(cell, name, 1)
    except DataError:
        return False
    return True


def _all_integers(cells: Sequence[str]) -> bool:
    return bool(cells) and all(_INTEGER.match(c) for c in cells)


def _compact_dates(cells: Sequence[str], name: str) -> bool:
    """8-digit YYYYMMDD integers in a column named like a time axis."""
    if name.strip().lower() not in TIME_NAMES:
        return False
    for cell in cells:
        match = _COMPACT_DATE.match(cell)
        if not match:
            return False
        try:
            datetime(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return False
    return True


def _strictly_increasing_integers(cells: Sequence[str]) -> bool:
    if len(cells) < 2 or not _all_integers(cells):
        return False
    values = np.array([int(c) for c in cells])
    return bool(np.all(np.diff(values) > 0))


def _increasing_integers(cells: Sequence[str]) -> bool:
    return _strictly_increasing_integers(cells)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _parse_moment(cell: str, column: str, row: int) -> datetime:
    """An ISO-8601 date or date-time (naive times are UTC); see the module doc."""
    text = cell.strip()
    if not text:
        raise DataError(f"--time-column {column}: data row {row} is empty")
    compact = _COMPACT_DATE.match(text)
    if compact:
        text = f"{compact[1]}-{compact[2]}-{compact[3]}"
    text = _SLASH_DATE.sub(lambda m: f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(
            f"--time-column {column}: data row {row} {cell!r} is not an ISO-8601 timestamp"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------


def _integer_grid(column: str, reason: str, values: np.ndarray, cells: Sequence[str]) -> Regular:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    _refuse_duplicates(column, ordered, [cells[i] for i in order])
    gaps = np.diff(ordered)
    step = _common_gap(gaps) if len(gaps) else 1
    _refuse_off_grid(column, gaps, step, [cells[i] for i in order], str(step))
    positions = (values - ordered[0]) // step
    length = int((ordered[-1] - ordered[0]) // step) + 1
    axis = TimeAxis(column, "integer", str(int(step)), reason, str(int(ordered[0])), 0)
    return Regular(_with_inserted(axis, length, len(values)), positions.astype(np.int64), length)


def _datetime_grid(
    column: str, reason: str, moments: list[datetime], cells: Sequence[str]
) -> Regular:
    seconds = np.array([m.timestamp() for m in moments])
    order = np.argsort(seconds, kind="stable")
    ordered = seconds[order]
    sorted_cells = [cells[i] for i in order]
    _refuse_duplicates(column, ordered, sorted_cells)
    gaps = np.diff(ordered)
    start = moments[int(order[0])]
    if len(gaps) and _monthly(moments):
        months = np.array([_month_index(m) for m in moments])
        ordered_months = months[order]
        step = _common_gap(np.diff(ordered_months))
        _refuse_off_grid(column, np.diff(ordered_months), step, sorted_cells, f"P{step}M")
        positions = (months - ordered_months[0]) // step
        length = int((ordered_months[-1] - ordered_months[0]) // step) + 1
        axis = TimeAxis(column, "datetime", f"P{step}M", reason, start.isoformat(), 0)
    else:
        step = _common_gap(np.rint(gaps).astype(np.int64)) if len(gaps) else 86400
        duration = _iso_duration(timedelta(seconds=int(step)))
        _refuse_off_grid(column, np.rint(gaps).astype(np.int64), step, sorted_cells, duration)
        positions = np.rint((seconds - ordered[0]) / step).astype(np.int64)
        length = int(round((ordered[-1] - ordered[0]) / step)) + 1
        axis = TimeAxis(column, "datetime", duration, reason, start.isoformat(), 0)
    return Regular(_with_inserted(axis, length, len(moments)), positions, length)


def _with_inserted(axis: TimeAxis, length: int, rows: int) -> TimeAxis:
    return TimeAxis(axis.column, axis.kind, axis.step, axis.reason, axis.start, length - rows)


def _refuse_duplicates(column: str, ordered: np.ndarray, cells: Sequence[str]) -> None:
    same = np.flatnonzero(np.diff(ordered) == 0)
    if len(same):
        first = int(same[0])
        raise DataError(
            f"--time-column {column}: timestamp {cells[first + 1]!r} appears more than once "
            "(aggregate duplicates before training)"
        )


def _common_gap(gaps: np.ndarray) -> int:
    """The most common gap (the smallest among equally common ones)."""
    counts = Counter(int(g) for g in gaps)
    best = max(counts.values())
    return min(g for g, n in counts.items() if n == best)


def _refuse_off_grid(
    column: str, gaps: np.ndarray, step: int, cells: Sequence[str], step_text: str
) -> None:
    off = np.flatnonzero(gaps % step != 0)
    if len(off):
        i = int(off[0])
        raise DataError(
            f"--time-column {column}: timestamps are not on a regular grid: the step is "
            f"{step_text}, but {cells[i]!r} is followed by {cells[i + 1]!r} "
            "(resample to a regular step, or pass --time-column none to ignore time)"
        )


def _monthly(moments: list[datetime]) -> bool:
    """All timestamps on the same day of the month (or all on a month's last day) at the same
    time of day, and gaps of about a month or more: a calendar-month grid."""
    times = {m.time() for m in moments}
    if len(times) != 1:
        return False
    days = {m.day for m in moments}
    last_days = all((m + timedelta(days=1)).day == 1 for m in moments)
    if len(days) != 1 and not last_days:
        return False
    seconds = sorted(m.timestamp() for m in moments)
    return bool(min(np.diff(seconds)) >= 28 * 86400)


def _month_index(moment: datetime) -> int:
    return moment.year * 12 + moment.month - 1


def _iso_duration(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    clock += f"{secs}S" if secs else ""
    return text + ("T" + clock if clock else "") if (days or clock) else "PT0S"
