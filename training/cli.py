"""What every ``python -m`` entry point of the project shares: one-line usage errors with exit
code 2, and the argument types its flags are parsed with.

``training`` holds it because every entry point may import ``training`` (``service`` and the
benchmarks do); it imports nothing of ours.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def command_parser(
    prog: str,
    description: str,
    *,
    artifacts_help: str | None = None,
    epilog: str | None = None,
) -> Parser:
    """The parser of a ``python -m`` entry point: one-line usage errors, defaults in ``--help``,
    and with ``artifacts_help`` the ``--artifacts`` flag (a version or base directory, default
    ``artifacts``) that the serving, benchmark and demo commands share."""
    parser = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if artifacts_help is not None:
        parser.add_argument(
            "--artifacts", type=Path, default=Path("artifacts"), help=artifacts_help
        )
    return parser


def int_list(
    text: str, *, minimum: int = 1, unique_sorted: bool = False, too_small: str | None = None
) -> tuple[int, ...]:
    """Comma-separated integers, each ``>= minimum``: ``"64,32"`` -> ``(64, 32)``.

    With ``unique_sorted`` the result is deduplicated and ascending (sets such as batch
    buckets). Raises :class:`argparse.ArgumentTypeError`, whose one-line message argparse
    prints after the flag's name: it names the text, or is ``too_small`` when a value is below
    ``minimum``.
    """
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if min(values) < minimum:
        raise argparse.ArgumentTypeError(
            too_small or f"every value must be >= {minimum}, got {text!r}"
        )
    return tuple(sorted(set(values))) if unique_sorted else values


def positive(kind: Callable[[str], float], *, zero_ok: bool = False) -> Callable[[str], float]:
    """An argparse type for numbers ``> 0`` (``>= 0`` with ``zero_ok``) of ``kind``. Text that
    is no number of ``kind`` gets argparse's own message (``invalid int value: 'x'``)."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero_ok else '>'} 0, got {text}")
        return value

    parse.__name__ = getattr(kind, "__name__", "number")
    return parse


def fraction(text: str) -> float:
    """An argparse type for a number in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value
