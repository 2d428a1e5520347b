"""Shadow evaluation: live windows, already answered by the serving version, also run through
a candidate version whose answers are never returned.

The event loop hands over what it answered with :meth:`ShadowEvaluation.offer`: one
non-blocking put on a bounded queue; when the queue is full the windows are skipped (sampling
under load), and windows with a series id are then sampled by series, so that the series
shadowed keep continuing. A thread of its own runs the candidate, and the serving version, on
them, and sleeps after each call so that they take at most ``TIME_SHARE`` of one core: the cost
stays bounded whatever the load.

What decides the verdict, once ``windows`` windows have been run (and, where series ids come,
``MIN_SCORED_VALUES`` values scored, for at most ``MAX_REALIZED_WAIT_SECONDS`` more):

- the candidate's outputs go through a collapse detector with the candidate's own calibration
  (its manifest's ``monitoring`` section), and the serving version's outputs of the same
  windows through fresh detectors of its own: if at the end the candidate's detector is set
  and its responsiveness is below ``RELATIVE_COLLAPSE`` of the serving version's, it is
  rejected (``collapsed``). Traffic of little variety lowers both alike; a collapsed model's
  alone falls to near zero. A candidate without a calibration is rejected (``failed``) while
  the detectors are on;
- where windows carry a ``series_id``, the candidate's forecasts and the serving version's
  forecasts of the same windows are scored alike as the series continue (the realized accuracy
  of :mod:`monitoring.realized`, in two private trackers): with at least ``MIN_SCORED_VALUES``
  values scored, a candidate whose mean absolute error exceeds ``max_error_ratio`` times the
  serving version's is rejected (``worse_than_serving``);
- a candidate that raises, or gives non-finite forecasts for windows the serving version
  answered, is rejected (``failed``);
- otherwise it is promoted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from monitoring.monitor import PredictionMonitor
from monitoring.realized import RealizedAccuracy
from service.threads import SHADOW_THREAD, name_os_thread

log = logging.getLogger(__name__)

TIME_SHARE = 0.25
"""The most of one core's time the candidate's shadow calls take."""
QUEUED_OFFERS = 8
"""Answered requests waiting for the candidate; beyond it, windows are skipped."""
MAX_SHADOW_BATCH = 256
"""The most windows in one shadow call of the candidate."""
MIN_SCORED_VALUES = 100
"""Realized values needed before realized error can reject a candidate."""
MAX_REALIZED_WAIT_SECONDS = 600.0
"""Where series ids come, how long an evaluation may go on past ``windows`` windows to score
MIN_SCORED_VALUES values; then the verdict is given on what was scored."""
MAX_SERIES_MODULUS = 64
"""Under load, at least one series in this many is still shadowed."""
RELATIVE_COLLAPSE = 0.5
"""A candidate whose detector fires is collapsed only if the serving version's detector, fed
the same windows, does not fire and the candidate's responsiveness is below this share of the
serving version's. Traffic of little variety (a few series, slowly walking) lowers both
versions' responsiveness alike; a collapsed model's falls to near zero on its own."""

# (forecasts [n, horizon] target units, raw outputs [n, horizon], monitored rows [n, F] or None)
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class Verdict:
    """The result of a shadow evaluation."""

    promote: bool
    reason: str  # "healthy", or a rejection reason of monitoring.metrics.REJECTION_REASONS
    detail: str  # one line for the log and ListVersions
    windows: int  # windows the candidate ran
    skipped: int  # windows offered but skipped (queue full)
    scored: int  # realized values scored for both versions
    candidate_mae: float  # realized MAE on those values (NaN when none)
    serving_mae: float


@dataclass(frozen=True)
class _Offer:
    windows: np.ndarray  # [n, window, features] raw, as answered
    series_ids: list[str] | None
    forecasts: np.ndarray  # [n, horizon] the serving version's


class ShadowEvaluation:
    """Runs ``predict`` (the candidate's) on offered windows until ``windows`` have run, then
    calls ``on_verdict`` once, from its thread."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], Outputs],
        *,
        monitor: PredictionMonitor | None,
        trackers: tuple[RealizedAccuracy, RealizedAccuracy] | None,
        windows: int,
        max_error_ratio: float,
        on_verdict: Callable[[Verdict], None],
        reference: Callable[[np.ndarray], Outputs] | None = None,
        reference_monitor: PredictionMonitor | None = None,
        require_detectors: bool = False,
        name: str = "shadow",
    ) -> None:
        """``predict(raw_windows)`` returns ``(forecasts, raw_output, monitored_rows)``;
        ``trackers``: fresh realized-accuracy trackers for the candidate and the serving
        version (None: no realized comparison). ``reference`` (the serving version's predict)
        and ``reference_monitor`` (fresh detectors with the serving version's calibration) see
        the same shadowed windows: a candidate counts as collapsed only where the serving
        version, on that same traffic, does not look alike (see :data:`RELATIVE_COLLAPSE`).
        ``require_detectors``: a candidate without ``monitor`` (no calibration in its manifest)
        is rejected, as it cannot be shown not to be collapsed."""
        self._require_detectors = require_detectors
        self._reference = reference
        self._reference_monitor = reference_monitor
        self._predict = predict
        self._monitor = monitor
        self._trackers = trackers
        self._needed = windows
        self._max_ratio = max_error_ratio
        self._on_verdict = on_verdict
        self._queue: queue.Queue[_Offer | None] = queue.Queue(QUEUED_OFFERS)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.windows = 0
        self.skipped = 0
        self._series_seen = False
        self._collapsed_since = 0  # windows run when the candidate's detector last got set
        # Under load, windows with a series id are kept for whole series (those whose id hashes
        # to 0 modulo this), so the series that are shadowed continue and can be scored.
        self._series_modulus = 1

    def start(self) -> None:
        self._thread.start()

    def offer(
        self, windows: np.ndarray, series_ids: list[str] | None, forecasts: np.ndarray
    ) -> None:
        """Windows the serving version answered (event loop; never waits). When the queue is
        full the offer is skipped, and from then on only every other series (then every
        fourth, ... up to one in ``MAX_SERIES_MODULUS``) is shadowed; when the shadow keeps up
        again (an empty queue), twice as many."""
        if series_ids is not None and self._series_modulus > 1:
            keep = [
                i
                for i, sid in enumerate(series_ids)
                if sid and zlib.crc32(sid.encode()) % self._series_modulus == 0
            ]
            if len(keep) < len(series_ids):
                self.skipped += len(series_ids) - len(keep)
                if not keep:
                    if self._queue.empty():  # the shadow keeps up: sample more series
                        self._series_modulus //= 2
                    return
                windows, forecasts = windows[keep], forecasts[keep]
                series_ids = [series_ids[i] for i in keep]
        try:
            self._queue.put_nowait(_Offer(windows, series_ids, forecasts))
        except queue.Full:
            self.skipped += len(windows)
            if series_ids is not None:  # sample fewer series, each of them whole
                self._series_modulus = min(2 * self._series_modulus, MAX_SERIES_MODULUS)
            return
        if self._series_modulus > 1 and self._queue.qsize() == 1:  # it was empty
            self._series_modulus //= 2

    def stop(self) -> None:
        """Abandon the evaluation: no verdict (idempotent; does not wait)."""
        self._stopped.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        name_os_thread(SHADOW_THREAD)
        try:
            verdict = self._evaluate()
        except Exception as exc:  # noqa: BLE001 - a failing candidate is rejected, not fatal
            log.exception("shadow evaluation: the candidate failed")
            verdict = self._verdict(False, "failed", f"the candidate failed: {exc}")
        if verdict is not None and not self._stopped.is_set():
            self._on_verdict(verdict)

    def _evaluate(self) -> Verdict | None:
        if self._monitor is None and self._require_detectors:
            return self._verdict(
                False,
                "failed",
                "its manifest has no detector calibration: it cannot be shown not to be "
                "collapsed (retrain it with this release)",
            )
        started_at = time.monotonic()
        while not self._enough(started_at):
            offers = self._take()
            if offers is None:
                return None
            if not offers:
                continue
            started = time.perf_counter()
            failed = self._run_candidate(offers)
            if failed is not None:
                return failed
            spent = time.perf_counter() - started
            if self._stopped.wait(spent * (1.0 / TIME_SHARE - 1.0)):
                return None
        return self._final()

    def _enough(self, started_at: float) -> bool:
        """``windows`` windows run and, where series ids came, enough values scored (or the
        evaluation has run for ``MAX_REALIZED_WAIT_SECONDS``)."""
        if self.windows < self._needed:
            return False
        if self._trackers is None or not self._series_seen:
            return True
        if time.monotonic() - started_at > MAX_REALIZED_WAIT_SECONDS:
            return True
        return self._trackers[0].totals().values >= MIN_SCORED_VALUES

    def _take(self) -> list[_Offer] | None:
        """The next offers, up to MAX_SHADOW_BATCH windows (None: stopped; empty: none came
        within a second)."""
        try:
            first = self._queue.get(timeout=1.0)
        except queue.Empty:
            return []
        if first is None or self._stopped.is_set():
            return None
        offers, size = [first], len(first.windows)
        while size < MAX_SHADOW_BATCH:
            try:
                offer = self._queue.get_nowait()
            except queue.Empty:
                break
            if offer is None:
                return None
            offers.append(offer)
            size += len(offer.windows)
        return offers

    def _run_candidate(self, offers: list[_Offer]) -> Verdict | None:
        windows = np.concatenate([o.windows for o in offers])
        serving = np.concatenate([o.forecasts for o in offers])
        forecasts, raw_output, monitored = self._predict(windows)
        if self._reference is not None and self._reference_monitor is not None:
            _observe(self._reference_monitor, windows, self._reference(windows))
        self.windows += len(windows)
        with np.errstate(over="ignore"):
            finite = np.isfinite(forecasts.astype(np.float32)).all(axis=1)
        if not finite.all():
            return self._verdict(
                False,
                "failed",
                f"{int((~finite).sum())} of {len(windows)} windows got non-finite forecasts "
                "that the serving version answered",
            )
        if self._monitor is not None:
            _observe(self._monitor, windows, (forecasts, raw_output, monitored))
            collapsed = self._monitor.collapse.collapsed
            if not collapsed:
                self._collapsed_since = 0
            elif not self._collapsed_since:
                self._collapsed_since = self.windows
        if self._trackers is not None:
            candidate, serving_tracker = self._trackers
            for tracker, answers in ((candidate, forecasts), (serving_tracker, serving)):
                offset = 0
                for offer in offers:
                    n = len(offer.windows)
                    if offer.series_ids is not None:
                        self._series_seen = True
                        part = answers[offset : offset + n]
                        tracker.submit(offer.series_ids, offer.windows, part)
                    offset += n
                tracker.flush()
        return None

    def _collapse(self) -> str:
        """Why the candidate counts as collapsed at the end ('' if it does not): its detector
        says so, and its responsiveness is below RELATIVE_COLLAPSE of the serving version's on
        the same windows."""
        if self._monitor is None or not self._monitor.collapse.collapsed:
            return ""
        mine = self._monitor.collapse.responsiveness
        since = f"the collapse detector set on its outputs since window {self._collapsed_since}"
        if self._reference_monitor is None:
            return f"{since} (responsiveness {mine:.3g})"
        theirs = self._reference_monitor.collapse.responsiveness
        if mine >= RELATIVE_COLLAPSE * theirs:
            return ""
        return (
            f"{since}: responsiveness {mine:.3g} against the serving version's {theirs:.3g} "
            "on the same windows"
        )

    def _final(self) -> Verdict:
        collapsed = self._collapse()
        if collapsed:
            return self._verdict(False, "collapsed", collapsed)
        scored, cand_mae, serve_mae = self._realized()
        if scored >= MIN_SCORED_VALUES and cand_mae > self._max_ratio * serve_mae:
            return self._verdict(
                False,
                "worse_than_serving",
                f"realized MAE {cand_mae:.4g} is {cand_mae / serve_mae:.3g}x the serving "
                f"version's {serve_mae:.4g} on the same {scored} values "
                f"(limit {self._max_ratio:g}x)",
            )
        realized = (
            f"realized MAE {cand_mae:.4g} vs {serve_mae:.4g} on {scored} values"
            if scored
            else "no realized values (no series_id on the shadowed windows)"
        )
        return self._verdict(True, "healthy", f"not collapsed; {realized}")

    def _realized(self) -> tuple[int, float, float]:
        if self._trackers is None:
            return 0, float("nan"), float("nan")
        cand, serve = (tracker.totals() for tracker in self._trackers)
        if cand.values == 0:
            return 0, float("nan"), float("nan")
        return cand.values, cand.abs_error / cand.values, serve.abs_error / max(serve.values, 1)

    def _verdict(self, promote: bool, reason: str, detail: str) -> Verdict:
        scored, cand_mae, serve_mae = self._realized()
        return Verdict(
            promote=promote,
            reason=reason,
            detail=f"{detail} ({self.windows} windows run, {self.skipped} skipped)",
            windows=self.windows,
            skipped=self.skipped,
            scored=scored,
            candidate_mae=cand_mae,
            serving_mae=serve_mae,
        )


def _observe(monitor: PredictionMonitor, windows: np.ndarray, outputs: Outputs) -> None:
    forecasts, raw_output, monitored = outputs
    rows = monitored if monitored is not None else windows[:, -1, :]
    monitor.observe(rows, raw_output, forecasts)
    monitor.flush()
