"""tf.distribute strategies for ``--distribute none|mirrored|multiworker``.

- ``mirrored``: synchronous data parallelism over the local GPUs (MirroredStrategy). Without
  GPUs, ``--cpu-devices N`` splits the CPU into N logical devices so the same code path runs
  (that is how the tests exercise it).
- ``multiworker``: MultiWorkerMirroredStrategy across machines, configured by the standard
  ``TF_CONFIG`` environment variable. Every worker trains; only the chief (task 0 of type
  "worker" or "chief") publishes the artifacts.

``--batch-size`` is the global batch; each replica gets ``batch_size / replicas``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorflow as tf

from training.config import DISTRIBUTE_CHOICES

log = logging.getLogger(__name__)


def split_cpu(devices: int) -> None:
    """Expose ``devices`` logical CPU devices. Must run before TensorFlow initialises."""
    if devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """The strategy for ``--distribute kind``, one of :data:`DISTRIBUTE_CHOICES`."""
    if kind not in DISTRIBUTE_CHOICES:
        raise ValueError(f"unknown --distribute {kind!r}")
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--distribute multiworker needs the TF_CONFIG environment variable")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    log.info("distribution: %s with %d replica(s)", kind, strategy.num_replicas_in_sync)
    return strategy


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or (
        kind == "worker" and index == 0 and "chief" not in json.loads(raw).get("cluster", {})
    )


def fit_multiworker(
    model: Any,
    strategy: tf.distribute.Strategy,
    train: tuple[Any, Any],
    validation: tuple[Any, Any],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: list[Any],
) -> dict[str, list[float]]:
    """Synchronous data-parallel training under MultiWorkerMirroredStrategy.

    Keras 3's ``model.fit`` cannot run under this strategy (keras-team/keras#20585), so this is
    a plain distributed step with the same loss (MSE plus the model's regularisation losses),
    optimizer and Keras callbacks (early stopping, LR schedule, progress, gradient norms).
    Every worker takes an equal, disjoint share of each epoch's shuffled windows, so all
    workers run the same number of steps and the collectives never wait on a missing peer.
    Validation loss is computed on every worker from the same (synchronised) weights, so early
    stopping makes the same decision everywhere.
    """
    import keras
    import numpy as np

    x, y = (np.asarray(a, dtype=np.float32) for a in train)
    x_val, y_val = (tf.constant(np.asarray(a, dtype=np.float32)) for a in validation)
    optimizer = model.optimizer
    replicas = strategy.num_replicas_in_sync

    def dataset_for(epoch: int) -> Any:
        order = np.random.default_rng(seed + epoch).permutation(len(x))

        def make(context: tf.distribute.InputContext) -> tf.data.Dataset:
            per_replica = context.get_per_replica_batch_size(batch_size)
            share = len(order) // context.num_input_pipelines
            mine = order[
                context.input_pipeline_id * share : (context.input_pipeline_id + 1) * share
            ]
            return tf.data.Dataset.from_tensor_slices((x[mine], y[mine])).batch(
                per_replica, drop_remainder=True
            )

        return strategy.distribute_datasets_from_function(make)

    @tf.function  # type: ignore[untyped-decorator]
    def train_step(batch: Any) -> Any:
        def step(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                pred = model(xb, training=True)
                per_example = tf.reduce_mean(tf.square(yb - pred), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), None)

    hooks = keras.callbacks.CallbackList(callbacks, model=model)
    history: dict[str, list[float]] = {"loss": [], "val_loss": []}
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(epochs):
        hooks.on_epoch_begin(epoch)
        total, steps = 0.0, 0
        for batch in dataset_for(epoch):
            total += float(train_step(batch))
            steps += 1
        val_loss = float(tf.reduce_mean(tf.square(y_val - model(x_val, training=False))))
        logs = {"loss": total / max(steps, 1), "val_loss": val_loss}
        history["loss"].append(logs["loss"])
        history["val_loss"].append(val_loss)
        hooks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    hooks.on_train_end()
    log.info(
        "multi-worker training: %d epochs, %d steps per epoch per worker, %d replicas",
        len(history["loss"]),
        steps,
        replicas,
    )
    return history
