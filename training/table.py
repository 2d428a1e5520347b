"""A CSV as users have it -> a :class:`~training.data.Series` on a regular time grid.

What is handled, and what is refused with one line naming the culprit:

- the delimiter is detected (comma, semicolon, tab or pipe; with the others, ``1,5`` is a
  decimal comma); bytes must be UTF-8;
- an empty file, a header without rows, or rows of the wrong length are refused;
- the time column is detected or named (:mod:`training.timeaxis`), rows are sorted by it and
  missing timestamps become rows of missing values;
- a column of numbers is an input; empty cells and ``NaN``/``NA``/``null`` are missing values;
- a column mixing numbers and text is refused, naming its first text cell;
- without ``--features``, columns that hold no number at all (text, or nothing) are dropped
  with a note; named with ``--features`` (or as the target), they are refused.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data import Series
from training.errors import DataError
from training.timeaxis import Regular, detect_time_column, regularize

DELIMITERS = ",;\t|"
MISSING = frozenset({"", "nan", "na", "n/a", "null", "none"})
_DECIMAL_COMMA = re.compile(r"^([+-]?\d+),(\d+)$")


def load_csv(
    path: str | Path,
    target: str,
    features: list[str] | None = None,
    time_column: str | None = None,
) -> Series:
    """Read a CSV with a header row into a series on a regular time grid.

    The target is always an input feature too (the model is autoregressive), and comes first
    unless ``features`` places it elsewhere. ``time_column`` names the time column, ``"none"``
    means there is none, and None detects it.
    """
    path = Path(path)
    header, columns, delimiter = _read_columns(path)
    time = _time_column(header, columns, time_column)
    names = _feature_names(path, header, target, features, time)
    values, dropped = _numeric_columns(
        columns, names, target, named=features is not None, decimal_comma=delimiter != ","
    )
    kept = tuple(n for n in names if n not in {d for d, _ in dropped})
    timestamps = None
    axis = None
    if time is not None:
        grid = regularize(time[0], time[1], columns[time[0]])
        values, timestamps = _on_grid(values, grid, columns[time[0]])
        axis = grid.axis
    return Series(
        values=values,
        feature_names=kept,
        target=target,
        timestamps=timestamps,
        time=axis,
        dropped=tuple(dropped),
        features_named=features is not None,
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _read_columns(path: Path) -> tuple[list[str], dict[str, list[str]], str]:
    """The header, each column's cells (stripped) and the delimiter; the file's problems are
    refused."""
    if not path.is_file():
        raise DataError(f"--data: no such file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"--data: cannot read {path}: {exc.strerror}") from None
    text = _decode(path, raw)
    if not text.strip():
        raise DataError(f"--data: {path} is empty")
    delimiter = _delimiter(text)
    try:
        rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    except csv.Error as exc:
        raise DataError(f"--data: {path} is not a readable CSV: {exc}") from None
    header = [name.strip() for name in rows[0]]
    body = [(n, row) for n, row in enumerate(rows[1:], start=2) if any(c.strip() for c in row)]
    if not body:
        raise DataError(f"--data: {path} has a header but no data rows")
    if len(set(header)) != len(header):
        repeated = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"--data: {path} repeats column name(s): {', '.join(repeated)}")
    columns: dict[str, list[str]] = {h: [] for h in header}
    for line, row in body:
        if len(row) != len(header):
            raise DataError(
                f"--data: line {line} of {path.name} has {len(row)} fields, expected {len(header)}"
            )
        for name, cell in zip(header, row, strict=True):
            columns[name].append(cell.strip())
    return header, columns, delimiter


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"--data: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


def _delimiter(text: str) -> str:
    """The delimiter of the header line: the one of ``DELIMITERS`` it uses most (comma when it
    uses none: a single column)."""
    first = text.lstrip("\ufeff").splitlines()[0]
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


# --------------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------------


def _time_column(
    header: list[str], columns: dict[str, list[str]], requested: str | None
) -> tuple[str, str] | None:
    if requested is None:
        return detect_time_column(header, columns)
    if requested.lower() == "none":
        return None
    if requested not in columns:
        raise DataError(
            f"--time-column {requested} is not a column (available: {', '.join(header)})"
        )
    return requested, "named with --time-column"


def _feature_names(
    path: Path,
    header: list[str],
    target: str,
    features: list[str] | None,
    time: tuple[str, str] | None,
) -> list[str]:
    time_name = time[0] if time else None
    names = list(features) if features else [h for h in header if h != time_name]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"--features lists column(s) more than once: {', '.join(repeated)}")
    if target not in names:
        names.insert(0, target)
    missing = [n for n in names if n not in header]
    if missing:
        raise DataError(
            f"--data: column(s) not in {path.name}: {', '.join(missing)} "
            f"(available: {', '.join(header)})"
        )
    if time_name is not None and time_name in names:
        what = "the target" if time_name == target else "a feature"
        raise DataError(f"--time-column {time_name} cannot also be {what}")
    return names


# Why a column is not numeric, in the words of its error or note.
TEXT, EMPTY = "non-numeric", "entirely empty"


def _numeric_columns(
    columns: dict[str, list[str]],
    names: list[str],
    target: str,
    *,
    named: bool,
    decimal_comma: bool,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The numeric columns as a matrix, and the columns dropped with their reasons. In a file
    not separated by commas, a comma between digits is a decimal separator (``1,5``)."""
    parsed: list[np.ndarray] = []
    dropped: list[tuple[str, str]] = []
    refused: dict[str, list[str]] = {TEXT: [], EMPTY: []}
    for name in names:
        cells = columns[name]
        if decimal_comma:
            cells = [_DECIMAL_COMMA.sub(r"\1.\2", c) for c in cells]
        column, kind = _parse_numeric(name, cells)
        if kind is None:
            parsed.append(column)
        elif named or name == target:
            refused[kind].append(name)
        else:
            dropped.append((name, f"{kind} column"))
    problems = [f"{kind} column(s): {', '.join(cols)}" for kind, cols in refused.items() if cols]
    if problems:
        raise DataError(f"--data: {'; '.join(problems)} (choose numeric inputs with --features)")
    return np.column_stack(parsed), dropped


def _parse_numeric(name: str, cells: Sequence[str]) -> tuple[np.ndarray, str | None]:
    """(values, None) with NaN for missing cells; or (nothing, TEXT or EMPTY) for a column with
    no number at all. A column mixing numbers and text, or holding an infinity, is refused."""
    out = np.empty(len(cells))
    first_text: tuple[int, str] | None = None
    for i, cell in enumerate(cells):
        if cell.lower() in MISSING:
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            first_text = first_text or (i + 1, cell)
            continue
        if not np.isfinite(out[i]):
            raise DataError(
                f"--data: non-numeric column(s): {name} (infinite value {cell!r} at data row "
                f"{i + 1})"
            )
    numbers = int(np.count_nonzero(~np.isnan(out))) if first_text is None else -1
    if first_text is not None:
        row, cell = first_text
        if any(c.lower() not in MISSING and _is_number(c) for c in cells):
            raise DataError(
                f"--data: column {name} mixes numbers and text (first text: {cell!r} at data "
                f"row {row})"
            )
        return np.empty(0), TEXT
    if numbers == 0:
        return np.empty(0), EMPTY
    return out, None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _on_grid(
    values: np.ndarray, grid: Regular, cells: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows in time order on the regular grid; grid points without a row are missing values."""
    placed = np.full((grid.length, values.shape[1]), np.nan)
    placed[grid.positions] = values
    stamps = [""] * grid.length
    for position, cell in zip(grid.positions, cells, strict=True):
        stamps[int(position)] = cell
    return placed, tuple(stamps)
