"""``python -m training.train``: train a regularised LSTM forecaster; publish it unless collapsed.

Exit codes: 0 published; 2 bad flags, paths or data; 3 the model is collapsed and was rejected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.cli import EXIT_USAGE, Parser, fraction, int_list, positive
from training.config import DISTRIBUTE_CHOICES, TrainConfig
from training.data import DataError, load_csv, synthetic_series
from training.prepare import Prepared, prepare
from training.transform import TARGET_MODES

PROG = "python -m training.train"
_DEFAULT = TrainConfig()


def _layer_sizes(text: str) -> tuple[int, ...]:
    """``--units``: LSTM layer sizes, e.g. ``"64,32"`` -> ``(64, 32)``."""
    return int_list(text, too_small="every layer needs at least 1 unit")


def build_parser() -> argparse.ArgumentParser:
    """The flags, one per :class:`TrainConfig` field, with its defaults."""
    p = Parser(
        prog=PROG,
        description=(
            "Train a regularised stacked-LSTM forecaster with a scaler fit on the training split "
            "only, evaluate it against persistence and mean forecasts, and publish a versioned, "
            "checksummed artifact directory -- unless the model is collapsed (near-constant "
            "output), in which case nothing is published and the run exits 3 with a diagnosis."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit codes: 0 published, 2 bad flags/paths/data, 3 collapsed model rejected.",
    )
    _add_data_flags(p)
    _add_model_flags(p)
    _add_optimisation_flags(p)
    _add_guard_and_output_flags(p)
    return p


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Where the series comes from, how it is split, windowed and scaled."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        type=Path,
        help="CSV file with a header row; omit for the built-in synthetic load series",
    )
    group.add_argument("--target", help="target column (required with --data; it is also an input)")
    group.add_argument(
        "--features",
        help="comma-separated input columns (default: all but the time "
        "column); the target is added if missing",
    )
    group.add_argument("--time-column", help="timestamp column (ISO-8601); rows are sorted by it")
    group.add_argument(
        "--synthetic-steps",
        type=positive(int),
        default=_DEFAULT.synthetic_steps,
        help="length in hourly steps of the built-in series",
    )
    group.add_argument(
        "--val-fraction",
        type=fraction,
        default=_DEFAULT.val_fraction,
        help="chronological validation share",
    )
    group.add_argument(
        "--test-fraction",
        type=fraction,
        default=_DEFAULT.test_fraction,
        help="chronological test share (the last rows)",
    )
    group.add_argument(
        "--window", type=positive(int), default=_DEFAULT.window, help="input window length"
    )
    group.add_argument(
        "--horizon", type=positive(int), default=_DEFAULT.horizon, help="steps forecast per window"
    )
    group.add_argument(
        "--target-mode",
        choices=TARGET_MODES,
        default=_DEFAULT.target_mode,
        help="delta: predict the change from the window's last target value "
        "(persistence-relative, robust to trend); level: predict scaled levels",
    )
    group.add_argument(
        "--no-scaling",
        action="store_true",
        help="train on raw values (reproduces the classic collapse; for experiments)",
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The network: layer sizes and regularisation."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--units",
        type=_layer_sizes,
        default=_DEFAULT.units,
        help="LSTM layer sizes, comma-separated, e.g. 64,32",
    )
    group.add_argument(
        "--dropout",
        type=fraction,
        default=_DEFAULT.dropout,
        help="input dropout of each LSTM layer and of the head",
    )
    group.add_argument(
        "--l2", type=float, default=_DEFAULT.l2, help="L2 weight penalty (0 disables)"
    )


def _add_optimisation_flags(parser: argparse.ArgumentParser) -> None:
    """The optimiser, the epochs, seeding and distribution."""
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--epochs", type=positive(int), default=_DEFAULT.epochs, help="maximum epochs"
    )
    group.add_argument(
        "--batch-size", type=positive(int), default=_DEFAULT.batch_size, help="mini-batch size"
    )
    group.add_argument(
        "--learning-rate",
        type=positive(float),
        default=_DEFAULT.learning_rate,
        help="Adam learning rate",
    )
    group.add_argument(
        "--clipnorm", type=positive(float), default=_DEFAULT.clipnorm, help="gradient clipping norm"
    )
    group.add_argument(
        "--patience",
        type=positive(int),
        default=_DEFAULT.patience,
        help="early-stopping patience in epochs (best weights are restored)",
    )
    group.add_argument(
        "--seed", type=int, default=_DEFAULT.seed, help="random seed (runs repeat on CPU)"
    )
    group.add_argument(
        "--distribute",
        choices=DISTRIBUTE_CHOICES,
        default=_DEFAULT.distribute,
        help="mirrored: all local GPUs (MirroredStrategy); multiworker: several "
        "machines via TF_CONFIG (MultiWorkerMirroredStrategy); --batch-size is global",
    )
    group.add_argument(
        "--cpu-devices",
        type=positive(int),
        default=_DEFAULT.cpu_devices,
        help="split the CPU into this many logical devices (lets --distribute "
        "mirrored run without GPUs, e.g. in tests)",
    )


def _add_guard_and_output_flags(parser: argparse.ArgumentParser) -> None:
    """When a model is rejected, and where a published one goes."""
    group = parser.add_argument_group("collapse guard and output")
    group.add_argument(
        "--std-ratio-threshold",
        type=float,
        default=_DEFAULT.std_ratio_threshold,
        help="reject when std(prediction)/std(target) on the model's output scale "
        "falls below this on validation or test",
    )
    group.add_argument(
        "--allow-collapsed",
        action="store_true",
        help="publish even a collapsed model (for reproductions and tests)",
    )
    group.add_argument(
        "--output",
        type=Path,
        default=_DEFAULT.output,
        help="base directory; each run writes <output>/<UTC version>/",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the flags into a :class:`TrainConfig`, load and prepare the data, then train."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    config = TrainConfig(**vars(args), argv=tuple(sys.argv[1:] if argv is None else argv))
    conflict = _flag_conflict(config)
    if conflict:
        return _usage_error(conflict)
    try:
        prepared = _load_and_prepare(config)
        _check_output(config.output)
    except DataError as exc:
        return _usage_error(str(exc))

    from training.run import fit_and_publish  # deferred: imports TensorFlow

    return fit_and_publish(prepared, config)


def _flag_conflict(config: TrainConfig) -> str | None:
    """The first pair of flags that cannot go together, described; None when all fit."""
    if config.data is not None and not config.target:
        return "--data requires --target"
    if config.distribute == "multiworker" and "TF_CONFIG" not in os.environ:
        return (
            "--distribute multiworker needs the TF_CONFIG environment variable "
            "(cluster and task of this worker)"
        )
    if config.data is None and (config.target or config.features or config.time_column):
        return "--target/--features/--time-column need --data"
    return None


def _load_and_prepare(config: TrainConfig) -> Prepared:
    """Load the CSV (or build the synthetic series), then split, impute, scale and window it."""
    if config.data is not None:
        assert config.target  # _flag_conflict refused --data without --target
        series = load_csv(config.data, config.target, config.feature_list(), config.time_column)
    else:
        series = synthetic_series(config.synthetic_steps)
    return prepare(
        series,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        window=config.window,
        horizon=config.horizon,
        target_mode=config.target_mode,
        scaling=not config.no_scaling,
    )


def _check_output(output: Path) -> None:
    """Refuse an ``--output`` that exists but is a file."""
    if output.exists() and not output.is_dir():
        raise DataError(f"--output {output} exists and is not a directory")


def _usage_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
