"""``python -m training.train``: train a regularised LSTM forecaster; publish it unless collapsed.

Exit codes: 0 published; 2 bad flags, paths or data; 3 the model is collapsed and was rejected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.data import DataError, load_csv, synthetic_series
from training.prepare import prepare
from training.transform import TARGET_MODES

log = logging.getLogger("training")

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _units(text: str) -> tuple[int, ...]:
    try:
        units = tuple(int(u) for u in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError("every layer needs at least 1 unit")
    return units


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m training.train",
        description=(
            "Train a regularised stacked-LSTM forecaster with a scaler fit on the training split "
            "only, evaluate it against persistence and mean forecasts, and publish a versioned, "
            "checksummed artifact directory -- unless the model is collapsed (near-constant "
            "output), in which case nothing is published and the run exits 3 with a diagnosis."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit codes: 0 published, 2 bad flags/paths/data, 3 collapsed model rejected.",
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        type=Path,
        help="CSV file with a header row; omit for the built-in synthetic load series",
    )
    d.add_argument("--target", help="target column (required with --data; it is also an input)")
    d.add_argument(
        "--features",
        help="comma-separated input columns (default: all but the time "
        "column); the target is added if missing",
    )
    d.add_argument("--time-column", help="timestamp column (ISO-8601); rows are sorted by it")
    d.add_argument(
        "--synthetic-steps",
        type=_positive(int),
        default=6000,
        help="length in hourly steps of the built-in series",
    )
    d.add_argument(
        "--val-fraction", type=_fraction, default=0.15, help="chronological validation share"
    )
    d.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.15,
        help="chronological test share (the last rows)",
    )
    d.add_argument("--window", type=_positive(int), default=48, help="input window length")
    d.add_argument("--horizon", type=_positive(int), default=1, help="steps forecast per window")
    d.add_argument(
        "--target-mode",
        choices=TARGET_MODES,
        default="delta",
        help="delta: predict the change from the window's last target value "
        "(persistence-relative, robust to trend); level: predict scaled levels",
    )
    d.add_argument(
        "--no-scaling",
        action="store_true",
        help="train on raw values (reproduces the classic collapse; for experiments)",
    )

    m = p.add_argument_group("model")
    m.add_argument(
        "--units",
        type=_units,
        default=(64, 32),
        help="LSTM layer sizes, comma-separated, e.g. 64,32",
    )
    m.add_argument(
        "--dropout",
        type=_fraction,
        default=0.2,
        help="input dropout of each LSTM layer and of the head",
    )
    m.add_argument("--l2", type=float, default=0.0, help="L2 weight penalty (0 disables)")

    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=_positive(int), default=30, help="maximum epochs")
    t.add_argument("--batch-size", type=_positive(int), default=64, help="mini-batch size")
    t.add_argument(
        "--learning-rate", type=_positive(float), default=2e-3, help="Adam learning rate"
    )
    t.add_argument("--clipnorm", type=_positive(float), default=1.0, help="gradient clipping norm")
    t.add_argument(
        "--patience",
        type=_positive(int),
        default=5,
        help="early-stopping patience in epochs (best weights are restored)",
    )
    t.add_argument("--seed", type=int, default=42, help="random seed (runs repeat on CPU)")
    t.add_argument(
        "--distribute",
        choices=("none", "mirrored", "multiworker"),
        default="none",
        help="mirrored: all local GPUs (MirroredStrategy); multiworker: several "
        "machines via TF_CONFIG (MultiWorkerMirroredStrategy); --batch-size is global",
    )
    t.add_argument(
        "--cpu-devices",
        type=_positive(int),
        default=1,
        help="split the CPU into this many logical devices (lets --distribute "
        "mirrored run without GPUs, e.g. in tests)",
    )

    g = p.add_argument_group("collapse guard and output")
    g.add_argument(
        "--std-ratio-threshold",
        type=float,
        default=0.1,
        help="reject when std(prediction)/std(target) on the model's output scale "
        "falls below this on validation or test",
    )
    g.add_argument(
        "--allow-collapsed",
        action="store_true",
        help="publish even a collapsed model (for reproductions and tests)",
    )
    g.add_argument(
        "--output",
        type=Path,
        default=Path("artifacts"),
        help="base directory; each run writes <output>/<UTC version>/",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    if args.data is not None and not args.target:
        print("python -m training.train: error: --data requires --target", file=sys.stderr)
        return EXIT_USAGE
    if args.distribute == "multiworker" and "TF_CONFIG" not in os.environ:
        print(
            "python -m training.train: error: --distribute multiworker needs the TF_CONFIG "
            "environment variable (cluster and task of this worker)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.data is None and (args.target or args.features or args.time_column):
        print(
            "python -m training.train: error: --target/--features/--time-column need --data",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        series = (
            load_csv(
                args.data,
                args.target,
                args.features.split(",") if args.features else None,
                args.time_column,
            )
            if args.data is not None
            else synthetic_series(args.synthetic_steps)
        )
        prepared = prepare(
            series,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            window=args.window,
            horizon=args.horizon,
            target_mode=args.target_mode,
            scaling=not args.no_scaling,
        )
        if args.output.exists() and not args.output.is_dir():
            raise DataError(f"--output {args.output} exists and is not a directory")
    except DataError as exc:
        print(f"python -m training.train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from training.run import fit_and_publish  # deferred: imports TensorFlow

    return fit_and_publish(prepared, args, argv_for_record=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
