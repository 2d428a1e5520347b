"""``TrainConfig``: every setting of one training run, built from the ``python -m training.train``
flags. The training steps (:mod:`training.run`) read this, never the parsed command line.

It imports nothing heavy, so ``--help`` stays fast and free of TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DISTRIBUTE_CHOICES = ("none", "mirrored", "multiworker")
"""The values of ``--distribute``; :mod:`training.distribute` builds a strategy for each."""


@dataclass(frozen=True)
class TrainConfig:
    """One field per flag, named after it (``--batch-size`` is ``batch_size``), holding the
    flag's default; plus ``argv``, the command line recorded in the manifest."""

    # data
    data: Path | None = None
    """CSV file with a header row; None for the built-in synthetic series."""
    target: str | None = None
    """Target column (required with ``data``; it is also an input)."""
    features: str | None = None
    """Comma-separated input columns; None for all but the time column."""
    time_column: str | None = None
    """Timestamp column (ISO-8601); rows are sorted by it."""
    synthetic_steps: int = 6000
    """Length in hourly steps of the built-in series."""
    val_fraction: float = 0.15
    """Chronological validation share."""
    test_fraction: float = 0.15
    """Chronological test share (the last rows)."""
    window: int = 48
    """Input window length in steps."""
    horizon: int = 1
    """Steps forecast per window."""
    target_mode: str = "delta"
    """``delta`` (change from the window's last target value) or ``level``."""
    no_scaling: bool = False
    """Train on raw values (reproduces the classic collapse)."""

    # model
    units: tuple[int, ...] = (64, 32)
    """LSTM layer sizes, first layer first."""
    dropout: float = 0.2
    """Input dropout of each LSTM layer and of the head."""
    l2: float = 0.0
    """L2 weight penalty (0 disables)."""

    # optimisation
    epochs: int = 30
    """Maximum epochs."""
    batch_size: int = 64
    """Global mini-batch size (split across replicas)."""
    learning_rate: float = 2e-3
    """Adam learning rate."""
    clipnorm: float = 1.0
    """Gradient clipping norm."""
    patience: int = 5
    """Early-stopping patience in epochs (best weights are restored)."""
    seed: int = 42
    """Random seed (runs repeat on CPU)."""
    distribute: str = "none"
    """One of :data:`DISTRIBUTE_CHOICES`."""
    cpu_devices: int = 1
    """Logical devices to split the CPU into (lets ``mirrored`` run without GPUs)."""

    # collapse guard and output
    std_ratio_threshold: float = 0.1
    """Reject when std(prediction)/std(target) on validation or test falls below this."""
    allow_collapsed: bool = False
    """Publish even a collapsed model (a diverged one never is)."""
    output: Path = Path("artifacts")
    """Base directory; each run writes ``<output>/<UTC version>/``."""

    argv: tuple[str, ...] = ()
    """The command line's arguments, recorded in the manifest."""

    def feature_list(self) -> list[str] | None:
        """``features`` split at commas; None when not given."""
        return self.features.split(",") if self.features else None
