"""``python -m training.train``: train a regularised LSTM forecaster; publish it unless collapsed.

Exit codes: 0 published; 2 bad flags, paths or data; 3 the model is collapsed and was rejected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from training.cli import EXIT_USAGE, Parser
from training.config import TrainConfig
from training.data import DataError, Series, synthetic_series
from training.prepare import Prepared, prepare
from training.seasons import detect_periods
from training.table import load_csv
from training.windowing import (
    WindowChoice,
    choose_window,
    fixed_window,
    shortest_split,
    training_target,
)

log = logging.getLogger("training")

PROG = "python -m training.train"


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field, in its group, with its default."""
    parser = Parser(
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
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        if "group" not in f.metadata:
            continue
        options = {k: v for k, v in f.metadata.items() if k != "group"}
        group = groups.get(f.metadata["group"]) or parser.add_argument_group(f.metadata["group"])
        groups[f.metadata["group"]] = group
        group.add_argument("--" + f.name.replace("_", "-"), default=f.default, **options)
    return parser


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

    _describe_data(prepared.series, config)

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
    choice = _window_choice(series, config)
    return prepare(
        series,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        window=choice.steps,
        horizon=config.horizon,
        target_mode=config.target_mode,
        scaling=not config.no_scaling,
        inputs=config.inputs,
        lags=choice.lags,
        window_choice=choice,
    )


def _window_choice(series: Series, config: TrainConfig) -> WindowChoice:
    """``--window auto`` from the seasons of the training split, or the number given."""
    fractions = {"val_fraction": config.val_fraction, "test_fraction": config.test_fraction}
    step = series.time.step if series.time is not None else None
    periods = detect_periods(training_target(series, **fractions), step)
    if isinstance(config.window, int):
        return fixed_window(config.window, periods)
    return choose_window(
        periods, shortest_split=shortest_split(series, **fractions), horizon=config.horizon
    )


def _describe_data(series: Series, config: TrainConfig) -> None:
    """What was made of the CSV, once all of it was found usable: the time axis, the columns
    that are not inputs, and inputs that will drift by construction."""
    if config.data is None:
        return
    if series.time is not None:
        inserted = series.time.inserted
        log.info(
            "time column: %s%s",
            series.time.describe(),
            f"; {inserted} missing timestamps became rows of missing values" if inserted else "",
        )
    elif config.time_column is None:
        log.info(
            "time column: none found, rows are taken in file order (or name one with --time-column)"
        )
    for name, reason in series.dropped:
        log.info("not an input: %s (%s)", name, reason)
    for name in series.monotonic_inputs:
        log.warning(
            "input %s rises or falls strictly over the training split: it will leave its "
            "training range, and be flagged as drifted, by construction",
            name,
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
