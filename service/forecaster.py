"""The forecaster core: raw windows -> scaled inputs -> compiled model -> forecasts in target units.

No gRPC here. Scaling and the inverse transform come from ``training.transform``, and prediction
intervals from ``training.intervals``: the implementations shared with training. The model runs
as a ``tf.function`` (XLA by default) on a bounded set of padded batch shapes ("buckets"), each
compiled during :meth:`warm_up`.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from service.errors import IntervalsUnavailable
from training.artifacts import Artifacts
from training.intervals import Conformal, ForecastIntervals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """One model call: what the client gets, and what monitoring looks at."""

    forecasts: np.ndarray  # [n, horizon] float64, target units
    raw_output: np.ndarray  # [n, horizon] float32, before the inverse transform
    inputs: np.ndarray  # [n, steps, channels] float32, the model's inputs
    model_seconds: float
    # [n, features] float64: one row per window of what the model saw, for the detectors
    monitored: np.ndarray | None = None
    version: str = ""  # the model version that made it


class Forecaster:
    def __init__(self, artifacts: Artifacts, *, buckets: tuple[int, ...], jit_compile: bool = True):
        self.artifacts = artifacts
        self.transform = artifacts.transform()
        calibration = artifacts.manifest.intervals
        self._conformal = None if calibration is None else Conformal(calibration, self.transform)
        self.buckets = tuple(sorted(buckets))
        model = artifacts.model
        spec = tf.TensorSpec([None, self.transform.steps, self.transform.channels], tf.float32)

        @tf.function(input_signature=[spec], jit_compile=jit_compile)  # type: ignore[untyped-decorator]
        def call(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        self._call = call

    @property
    def version(self) -> str:
        return self.artifacts.version

    @property
    def window(self) -> int:
        return self.transform.window

    @property
    def n_features(self) -> int:
        return self.transform.n_features

    def check_levels(self, levels: Sequence[float]) -> None:
        """Refuse interval levels when the version has no calibration for them."""
        if levels and self._conformal is None:
            raise self._no_calibration()

    def intervals(
        self, raw_windows: np.ndarray, forecasts: np.ndarray, levels: Sequence[float]
    ) -> ForecastIntervals:
        """The calibrated intervals of ``forecasts`` ``[n, horizon]`` made from ``raw_windows``,
        at ``levels`` (percent, each in (0, 100): see ``service.convert``)."""
        if self._conformal is None:
            raise self._no_calibration()
        return self._conformal.bounds(forecasts, raw_windows, levels)

    def _no_calibration(self) -> IntervalsUnavailable:
        return IntervalsUnavailable(
            f"version {self.version} was trained without an interval calibration and serves "
            "point forecasts only: ask without levels, or serve a version trained with one"
        )

    def warm_up(self, stop: threading.Event | None = None, *, duty: float = 1.0) -> float:
        """Compile every bucket once (stopping early when ``stop`` is set, e.g. by SIGTERM).
        With ``duty`` below 1, pause after each bucket so that compiling takes about that
        share of the thread's time (a candidate compiling beside live traffic). Returns the
        seconds it took."""
        started = time.perf_counter()
        for size in self.buckets:
            if stop is not None and stop.is_set():
                log.info("warm-up interrupted")
                break
            bucket_started = time.perf_counter()
            shape = (size, self.transform.steps, self.transform.channels)
            self._call(np.zeros(shape, np.float32)).numpy()
            if duty < 1.0:
                time.sleep((time.perf_counter() - bucket_started) * (1.0 / duty - 1.0))
        seconds = time.perf_counter() - started
        log.info("warmed up %d batch buckets %s in %.1fs", len(self.buckets), self.buckets, seconds)
        return seconds

    def _bucket(self, n: int) -> int:
        return self.buckets[min(bisect.bisect_left(self.buckets, n), len(self.buckets) - 1)]

    def predict(self, raw_windows: np.ndarray) -> BatchResult:
        """``raw_windows`` ``[n, window, features]`` in training units; n may exceed a bucket.

        Rows are independent: a window whose extreme values give a non-finite forecast does not
        affect its neighbours, and the caller rejects just that window.
        """
        started = time.perf_counter()
        x, anchors = self.transform.encode_windows(raw_windows)
        outputs = []
        largest = self.buckets[-1]
        for lo in range(0, len(x), largest):
            chunk = x[lo : lo + largest]
            size = self._bucket(len(chunk))
            if size != len(chunk):
                chunk = np.concatenate(
                    [chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)]
                )
            outputs.append(self._call(chunk).numpy()[: min(largest, len(x) - lo)])
        raw = np.concatenate(outputs)
        forecasts = self.transform.decode(raw, anchors)
        seconds = time.perf_counter() - started
        return BatchResult(
            forecasts, raw, x, seconds, self.transform.monitored_rows(x), self.version
        )
