"""``TrainConfig``: every setting of one training run, and the ``python -m training.train`` flag
that sets it. Each field carries its flag's help text, argument type and group, so a setting is
described once; the training steps (:mod:`training.run`) read this, never the parsed command line.

It imports nothing heavy, so ``--help`` stays fast and free of TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.cli import fraction, int_list, positive

DISTRIBUTE_CHOICES = ("none", "mirrored", "multiworker")
"""The values of ``--distribute``; :mod:`training.distribute` builds a strategy for each."""

TARGET_MODES = ("delta", "level")
"""The values of ``--target-mode``; :class:`training.transform.WindowTransform` implements them."""

INTERVAL_METHODS = ("absolute", "normalized")
"""The values of ``--interval-method``; :mod:`training.intervals` implements them."""

INPUT_MODES = ("relative", "level")
"""The values of ``--inputs``; :class:`training.transform.WindowTransform` implements them."""

# Flag groups, in the order --help shows them.
DATA, MODEL, OPTIMISATION, OUTPUT = "data", "model", "optimisation", "collapse guard and output"


def _window(text: str) -> int | str:
    return "auto" if text == "auto" else int(positive(int)(text))


def _layer_sizes(text: str) -> tuple[int, ...]:
    return int_list(text, too_small="every layer needs at least 1 unit")


def _flag(default: Any, group: str, help: str, **argparse_kwargs: Any) -> Any:
    """A field with its flag: ``help`` and ``argparse_kwargs`` go to ``add_argument``."""
    return field(default=default, metadata={"group": group, "help": help, **argparse_kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """One field per flag, named after it (``--batch-size`` is ``batch_size``), holding the
    flag's default; plus ``argv``, the command line recorded in the manifest."""

    data: Path | None = _flag(
        None,
        DATA,
        "CSV file with a header row; omit for the built-in synthetic load series",
        type=Path,
    )
    target: str | None = _flag(
        None, DATA, "target column (required with --data; it is also an input)"
    )
    features: str | None = _flag(
        None,
        DATA,
        "comma-separated input columns; the target is added if missing. Default: every "
        "numeric column but the time column, less those that are constant or rise or fall "
        "strictly over the training split (a named one is kept, with a warning)",
    )
    time_column: str | None = _flag(
        None,
        DATA,
        "time column; rows are sorted by it and missing timestamps become imputed rows. "
        "Default: detected (ISO-8601 dates, or increasing integers named like ds, date, time, "
        "step, index, or an unnamed first column); none: no time column, rows in file order",
    )
    synthetic_steps: int = _flag(
        6000, DATA, "length in hourly steps of the built-in series", type=positive(int)
    )
    val_fraction: float = _flag(0.15, DATA, "chronological validation share", type=fraction)
    test_fraction: float = _flag(
        0.15, DATA, "chronological test share (the last rows)", type=fraction
    )
    window: int | str = _flag(
        "auto",
        DATA,
        "rows of history the LSTM runs over. auto: two cycles of the shortest seasonal period "
        "found in the training split (16-64 rows; 32 without one), plus an input holding the "
        "target one period back for every period found; or a number of rows (no lag inputs)",
        type=_window,
    )
    horizon: int = _flag(1, DATA, "steps forecast per window", type=positive(int))
    target_mode: str = _flag(
        "delta",
        DATA,
        "delta: predict the change from the window's last target value "
        "(persistence-relative, robust to trend); level: predict scaled levels",
        choices=TARGET_MODES,
    )
    inputs: str = _flag(
        "relative",
        DATA,
        "relative: the target's inputs relative to its last observed value (stays in range on "
        "a trend); level: scaled levels (format 1's transform, for comparisons)",
        choices=INPUT_MODES,
    )
    no_scaling: bool = _flag(
        False,
        DATA,
        "train on raw values (reproduces the classic collapse; for experiments)",
        action="store_true",
    )

    units: tuple[int, ...] = _flag(
        (64, 32), MODEL, "LSTM layer sizes, comma-separated, e.g. 64,32", type=_layer_sizes
    )
    dropout: float = _flag(
        0.2, MODEL, "input dropout of each LSTM layer and of the head", type=fraction
    )
    l2: float = _flag(0.0, MODEL, "L2 weight penalty (0 disables)", type=float)

    epochs: int = _flag(30, OPTIMISATION, "maximum epochs", type=positive(int))
    batch_size: int = _flag(64, OPTIMISATION, "mini-batch size", type=positive(int))
    learning_rate: float = _flag(2e-3, OPTIMISATION, "Adam learning rate", type=positive(float))
    clipnorm: float = _flag(1.0, OPTIMISATION, "gradient clipping norm", type=positive(float))
    patience: int = _flag(
        5,
        OPTIMISATION,
        "early-stopping patience in epochs (best weights are restored)",
        type=positive(int),
    )
    seed: int = _flag(42, OPTIMISATION, "random seed (runs repeat on CPU)", type=int)
    distribute: str = _flag(
        "none",
        OPTIMISATION,
        "mirrored: all local GPUs (MirroredStrategy); multiworker: several machines via "
        "TF_CONFIG (MultiWorkerMirroredStrategy); --batch-size is global",
        choices=DISTRIBUTE_CHOICES,
    )
    cpu_devices: int = _flag(
        1,
        OPTIMISATION,
        "split the CPU into this many logical devices (lets --distribute mirrored run "
        "without GPUs, e.g. in tests)",
        type=positive(int),
    )

    std_ratio_threshold: float = _flag(
        0.1,
        OUTPUT,
        "reject when std(prediction)/std(target) on the model's output scale falls below "
        "this on validation or test",
        type=float,
    )
    allow_worse_than_baselines: bool = _flag(
        False,
        OUTPUT,
        "publish even a model that does not beat persistence, or seasonal naive at a detected "
        "period, on validation (for comparisons and tests)",
        action="store_true",
    )
    allow_collapsed: bool = _flag(
        False,
        OUTPUT,
        "publish even a collapsed model (for reproductions and tests)",
        action="store_true",
    )
    interval_method: str = _flag(
        "absolute",
        OUTPUT,
        "prediction intervals, split conformal on the validation split's errors: absolute "
        "gives every window of a horizon step the same width; normalized scales it by the "
        "window's recent one-step volatility (measured on six real series it was not "
        "narrower at the same coverage; see the README)",
        choices=INTERVAL_METHODS,
    )
    output: Path = _flag(
        Path("artifacts"),
        OUTPUT,
        "base directory; each run writes <output>/<UTC version>/",
        type=Path,
    )

    argv: tuple[str, ...] = ()
    """The command line's arguments, recorded in the manifest (not a flag)."""

    def feature_list(self) -> list[str] | None:
        """``features`` split at commas; None when not given."""
        return self.features.split(",") if self.features else None
