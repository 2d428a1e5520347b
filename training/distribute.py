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

import tensorflow as tf

log = logging.getLogger(__name__)

CHOICES = ("none", "mirrored", "multiworker")


def split_cpu(devices: int) -> None:
    """Expose ``devices`` logical CPU devices. Must run before TensorFlow initialises."""
    if devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )


def make_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif kind == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--distribute multiworker needs the TF_CONFIG environment variable")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise ValueError(f"unknown --distribute {kind!r}")
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
