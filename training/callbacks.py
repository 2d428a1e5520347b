"""Keras callbacks: per-layer gradient norms and one progress line per epoch."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import keras
import numpy as np
import tensorflow as tf


class GradientNorms(keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
    """Record the L2 norm of each layer's loss gradient on a fixed training sample, per epoch.

    Epoch 0 is recorded before the first update, so the report shows where training started.
    ``history`` maps a layer name to its list of norms.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, sample: int = 256) -> None:
        super().__init__()
        self._x = tf.constant(x[:sample])
        self._y = tf.constant(y[:sample])
        self._loss = keras.losses.MeanSquaredError()
        self.history: dict[str, list[float]] = {}

    def _record(self) -> None:
        layers = [layer for layer in self.model.layers if layer.trainable_weights]
        variables = [v for layer in layers for v in layer.trainable_weights]
        with tf.GradientTape() as tape:
            loss = self._loss(self._y, self.model(self._x, training=False))
        grads = tape.gradient(loss, variables)
        offset = 0
        for layer in layers:
            n = len(layer.trainable_weights)
            layer_grads = [g for g in grads[offset : offset + n] if g is not None]
            offset += n
            norm = float(tf.linalg.global_norm(layer_grads)) if layer_grads else 0.0
            self.history.setdefault(layer.name, []).append(norm)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._record()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._record()


class EpochProgress(keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
    """One line per epoch: loss, validation loss, learning rate, time, and a best marker."""

    def __init__(self, epochs: int, stream: TextIO | None = None) -> None:
        super().__init__()
        self._epochs = epochs
        self._stream = stream
        self._best = float("inf")
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        val = float(logs.get("val_loss", float("nan")))
        marker = ""
        if val < self._best:
            self._best = val
            marker = "  *best"
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        print(
            f"epoch {epoch + 1:>3}/{self._epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"val_loss {val:.4f}  lr {lr:.1e}  {time.perf_counter() - self._start:.1f}s{marker}",
            file=self._stream or sys.stderr,
            flush=True,
        )
