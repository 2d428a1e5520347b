"""The prediction monitor: collapse and drift detectors over the model's batches, buffered off
the response path (on the batcher's monitoring thread), and a custom Prometheus collector whose
gauges are computed at scrape time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitoring.detectors import CollapseDetector, DriftDetector
from monitoring.ewstats import WEIGHT_TABLE, EWStats
from monitoring.reference import MonitorSpec

# The detectors update once this many windows wait. One update then holds at most this plus one
# model batch, which stays inside the EW weight table (longer batches compute their weights).
UPDATE_EVERY = WEIGHT_TABLE // 2
# ... or once the oldest buffered window has waited this long; the service's batcher also calls
# flush() after a pause in traffic of the same length.
MAX_DELAY_SECONDS = 0.1


class PredictionMonitor:
    """Collapse and drift detectors over the model's batches, exported as a custom collector."""

    def __init__(
        self,
        spec: MonitorSpec,
        *,
        on_collapse_change: Callable[[bool], None] | None = None,
        update_every: int = UPDATE_EVERY,
        max_delay: float = MAX_DELAY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Model batches are buffered, and the detectors update once ``update_every`` windows
        wait or, when a batch arrives, the oldest has waited ``max_delay`` seconds. An update
        has a fixed cost of a few dozen numpy calls whatever its size, so under load the
        buffer spreads it over hundreds of windows, and under light traffic the delay bound
        keeps the collapse action prompt. :meth:`flush` applies the buffer at once: a scrape
        calls it first, so the exported figures include every window observed so far, and the
        service calls it when traffic pauses.

        ``on_collapse_change(collapsed)`` is called under the monitor's lock, in the order of
        the transitions; it must return quickly and not call back into the monitor."""
        calibration = spec.calibration
        settings = calibration.settings
        self.feature_names = spec.feature_names
        horizon = spec.horizon
        features = list(spec.features.values())
        # Standardization of [raw output | newest input row]: outputs by the validation std
        # around 0, inputs by the training mean and std.
        pred_std = np.broadcast_to(spec.prediction_std, (horizon,))
        in_mean = np.array([f.mean for f in features])
        in_std = np.array([f.std for f in features])
        self._z_shift = np.concatenate([np.zeros(horizon), in_mean])
        self._z_scale = 1.0 / np.maximum(np.concatenate([pred_std, in_std]), 1e-12)
        self.collapse = CollapseDetector(
            horizon=horizon,
            n_features=len(self.feature_names),
            calibration=calibration.collapse,
            settings=settings,
        )
        self.drift = DriftDetector(
            reference=spec.features, calibration=calibration.drift, settings=settings
        )
        self._target = EWStats(horizon, settings.drift_halflife)
        self._on_change = on_collapse_change
        self._lock = threading.Lock()
        n_f = len(self.feature_names)
        # Monotonic sufficient statistics of standardized values: count, sum of the positive
        # parts, sum of the magnitudes of the negative parts, sum of squares. (A plain sum goes
        # down on negative values, and rate() would read every decrease as a counter reset.)
        # Rows: count, positive sum, negative magnitude sum, squares; columns: the horizon's
        # standardized outputs, then the standardized features.
        self._horizon = horizon
        self._sums = np.zeros((4, horizon + n_f))
        self._update_every = max(1, update_every)
        self.max_delay = max_delay
        self._clock = clock
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_windows = 0
        self._pending_since = 0.0

    def observe(self, last_rows: np.ndarray, raw_output: np.ndarray, forecasts: np.ndarray) -> None:
        """One model batch: newest scaled input row per window ``[n, F]``, raw output
        ``[n, horizon]``, forecasts in target units ``[n, horizon]``."""
        now = self._clock()
        with self._lock:
            if not self._pending:
                self._pending_since = now
            self._pending.append((last_rows, raw_output, forecasts))
            self._pending_windows += len(last_rows)
            if (
                self._pending_windows >= self._update_every
                or now - self._pending_since >= self.max_delay
            ):
                self._flush()

    def flush(self) -> None:
        """Apply the buffered windows now: before a scrape, when traffic pauses, at shutdown,
        and after each batch of a replay."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        """Update the detectors with the buffer (under the lock). A change of the collapse state
        is reported from here, so transitions reach the callback in the order they happened."""
        if not self._pending:
            return
        last_rows, raw_output, forecasts = (
            np.concatenate(parts, dtype=np.float64) for parts in zip(*self._pending, strict=True)
        )
        self._pending.clear()
        self._pending_windows = 0
        finite = (
            np.isfinite(raw_output).all(axis=1)
            & np.isfinite(last_rows).all(axis=1)
            & np.isfinite(forecasts).all(axis=1)
        )
        if not finite.all():
            # Windows too extreme to forecast (their callers got INVALID_ARGUMENT) would turn
            # every statistic into NaN for good.
            last_rows, raw_output, forecasts = (
                last_rows[finite],
                raw_output[finite],
                forecasts[finite],
            )
            if not len(last_rows):
                return
        was = self.collapse.collapsed
        self.collapse.update(raw_output, last_rows)
        self.drift.update(last_rows)
        self._target.update(forecasts)
        z = (np.hstack([raw_output, last_rows]) - self._z_shift) * self._z_scale
        # Column sums as products with a ones vector (BLAS; numpy's axis-0 reductions over a
        # narrow matrix are several times slower). Positive and negative parts come from the
        # sums of z and |z| (clipped at 0: the counters must never go down, whatever rounding).
        ones = np.ones(len(z))
        signed, magnitude = ones @ z, ones @ np.abs(z)
        sums = self._sums
        sums[0] += len(z)
        sums[1] += np.maximum(0.5 * (magnitude + signed), 0.0)
        sums[2] += np.maximum(0.5 * (magnitude - signed), 0.0)
        sums[3] += np.einsum("ij,ij->j", z, z)
        if self.collapse.collapsed != was and self._on_change is not None:
            self._on_change(self.collapse.collapsed)

    def collect(self) -> Iterator[Metric]:
        # Everything happens before the first yield: a reader that stops early (as
        # registry.get_sample_value does) must not leave the buffer half applied.
        with self._lock:
            self._flush()
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator[Metric]:
        c, d = self.collapse, self.drift
        yield _gauge(
            "forecast_prediction_variance_ratio",
            "Recent variance of the raw model output over its healthy (validation "
            "replay) level; 1.0 is healthy, near 0 is constant output.",
            c.variance_ratio,
        )
        yield _gauge(
            "forecast_prediction_responsiveness_ratio",
            "Variance ratio divided by the recent input activity ratio; the "
            "collapse detector's statistic.",
            c.responsiveness,
        )
        yield _gauge(
            "forecast_input_activity_ratio",
            "Recent variance of the newest input rows over its healthy level.",
            c.activity_ratio,
        )
        yield _gauge(
            "forecast_collapse_threshold_ratio",
            "Calibrated responsiveness below which the output counts as collapsed.",
            c.threshold_on,
        )
        yield _gauge(
            "forecast_output_collapsed",
            "1 when the model output has collapsed to a near-constant value.",
            float(c.collapsed),
        )
        events = CounterMetricFamily(
            "forecast_collapse_events", "Transitions into the collapsed state."
        )
        events.add_metric([], c.events)
        yield events
        windows = CounterMetricFamily(
            "forecast_monitored_windows", "Windows seen by the detectors."
        )
        windows.add_metric([], c.pred.count)
        yield windows
        t_mean = self._target.mean.mean() if self._target.count else float("nan")
        t_std = float(np.sqrt(self._target.var.mean())) if self._target.count else float("nan")
        yield _gauge(
            "forecast_prediction_target_mean", "Recent mean forecast in target units.", t_mean
        )
        yield _gauge(
            "forecast_prediction_target_stddev",
            "Recent std of forecasts in target units (follows the series level in "
            "delta mode; use the variance ratio for collapse).",
            t_std,
        )
        yield from _sufficient(
            "forecast_prediction_standardized",
            "raw model outputs standardized by the validation std",
            [],
            [self._sums[:, : self._horizon].sum(axis=1)],
        )
        yield from _sufficient(
            "forecast_input_standardized",
            "newest input rows standardized by training mean/std",
            self.feature_names,
            list(self._sums[:, self._horizon :].T),
        )
        per_feature = {
            "forecast_input_mean_zscore": (
                "Recent input mean in training-std units.",
                d.mean_zscore,
            ),
            "forecast_input_std_ratio": ("Recent input std over training std.", d.std_ratio),
            "forecast_input_psi": (
                "PSI of recent inputs over training decile bins (NaN "
                "until the effective sample reaches 500 windows).",
                d.psi,
            ),
            "forecast_input_out_of_range_ratio": (
                "Recent share of inputs outside the training min/max.",
                d.out_of_range_ratio,
            ),
            "forecast_input_drifted": (
                "1 when the feature left its calibrated band.",
                d.drifted.astype(float),
            ),
        }
        for name, (help_text, values) in per_feature.items():
            family = GaugeMetricFamily(name, help_text, labels=["feature"])
            for feature, value in zip(self.feature_names, values, strict=True):
                family.add_metric([feature], float(value))
            yield family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=float(value))


def _sufficient(
    prefix: str, what: str, features: list[str], sums: list[np.ndarray]
) -> Iterator[Metric]:
    """Monotonic counters from which PromQL gets the fleet mean and variance:
    mean = (rate(positive_sum) - rate(negative_sum)) / rate(values),
    variance = rate(squares) / rate(values) - mean^2."""
    parts = (
        ("values", "Number"),
        ("positive_sum", "Sum of the positive"),
        ("negative_sum", "Sum of the magnitudes of the negative"),
        ("squares", "Sum of squares"),
    )
    for i, (suffix, label) in enumerate(parts):
        family = CounterMetricFamily(
            f"{prefix}_{suffix}", f"{label} of {what}.", labels=["feature"] if features else None
        )
        if features:
            for feature, row in zip(features, sums, strict=True):
                family.add_metric([feature], float(row[i]))
        else:
            family.add_metric([], float(sums[0][i]))
        yield family
