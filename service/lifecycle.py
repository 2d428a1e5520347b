"""Model versions without restarts: watch the artifacts, load a new version in the background,
evaluate it in the shadow of the serving one, promote or reject it, and switch on request.

The pieces, all on the event loop except where noted:

- :class:`ServingModel`: one loaded, compiled version with its model info and its own
  detectors. A request is pinned to the version serving when it arrives
  (:attr:`ModelLifecycle.serving`): its windows go to that version's model only, and its
  response carries that version, so no request is answered by a mixture. Switching is one
  assignment on the event loop: atomic for every request that comes after it.
- Watching: every ``--poll-seconds`` the base directory is listed (off the loop). A version
  directory seen for the first time is verified (manifest, format, checksums); one that fails
  is *ignored*, with one log line and ``forecast_model_versions_ignored_total{reason}``, and is
  looked at again only when its files change (a copy still in progress completes). A valid
  one whose request contract (features, window, horizon, target) differs from the serving
  version's is ignored as ``incompatible``: its clients would break.
- A new valid version becomes the *candidate*: loaded and compiled off the loop (serving goes
  on), then evaluated by :class:`service.shadow.ShadowEvaluation` on live traffic, or promoted
  as soon as it is warm with ``--promote-without-traffic``. A rejected version stays rejected:
  only a version published under a new name is evaluated again. A newer version arriving
  during an evaluation replaces the candidate.
- :meth:`ModelLifecycle.set_serving_version`: the operator's switch (rollback), no shadow.

Versions present at start-up are not candidates: the newest valid one serves, the others are
available for a switch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from monitoring.metrics import LifecycleMetrics
from monitoring.monitor import PredictionMonitor
from monitoring.realized import RealizedAccuracy
from service.api import pb
from service.convert import split_metrics
from service.errors import VersionNotFound, VersionUnusable
from service.forecaster import Forecaster
from service.shadow import ShadowEvaluation, Verdict
from service.threads import LOADER_THREAD, name_os_thread
from training.artifacts import ArtifactError, Artifacts, list_versions, load_artifacts
from training.manifest import MANIFEST_FILE, Manifest

log = logging.getLogger(__name__)

SERVING, CANDIDATE, REJECTED, AVAILABLE, IGNORED = (
    "serving",
    "candidate",
    "rejected",
    "available",
    "ignored",
)


@dataclass(eq=False)
class ServingModel:
    """One loaded version: its artifacts, compiled forecaster, model info and detectors."""

    artifacts: Artifacts
    forecaster: Forecaster
    info: pb.ModelInfo
    monitor: PredictionMonitor | None = None

    @property
    def version(self) -> str:
        return self.artifacts.version


@dataclass
class VersionRecord:
    """What the server knows of one version directory."""

    version: str
    status: str
    signature: tuple[int, ...] = ()  # changes when the directory's files do
    created_at: str = ""
    test: pb.SplitMetrics | None = None
    reason: str = ""  # why rejected or ignored
    kind: str = ""  # an ignored version's metric reason (monitoring.metrics.IGNORED_REASONS)

    def with_kind(self, kind: str) -> VersionRecord:
        self.kind = kind
        return self

    def message(self) -> pb.ModelVersion:
        return pb.ModelVersion(
            version=self.version,
            status=self.status,
            created_at=self.created_at,
            test=self.test,
            reason=self.reason,
        )


@dataclass(frozen=True)
class LifecycleSettings:
    base: Path | None  # the watched base directory; None: a pinned version
    poll_seconds: float
    shadow_windows: int
    shadow_max_error_ratio: float
    promote_without_traffic: bool


# build(artifacts) -> a ServingModel, compiled and warm. Blocking: runs off the event loop.
Build = Callable[[Artifacts], ServingModel]
# tracker() -> a fresh realized-accuracy tracker shaped like the serving one (None: off).
Tracker = Callable[[], RealizedAccuracy | None]
# on_switch(previous, new): called on the event loop right after the serving version changed.
OnSwitch = Callable[[ServingModel, ServingModel], None]


class PeerVerdict(Protocol):
    @property
    def promote(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def worker(self) -> int: ...


class InstancePeers(Protocol):
    """The other worker processes of the instance (:mod:`service.workers`): a verdict on a
    candidate and an operator's switch are the instance's, not one worker's."""

    def verdict(self, version: str) -> PeerVerdict | None:
        """Another worker's verdict on ``version``, if one was reached."""

    def publish_verdict(
        self, version: str, promote: bool, reason: str, detail: str
    ) -> tuple[PeerVerdict, bool]:
        """This worker's verdict, unless another's came first: returns the instance's, and
        whether it is this worker's."""

    def publish_switch(self, version: str) -> int:
        """Have every worker serve ``version``."""


class ModelLifecycle:
    def __init__(
        self,
        serving: ServingModel,
        settings: LifecycleSettings,
        *,
        build: Build,
        tracker: Tracker,
        on_switch: OnSwitch,
        metrics: LifecycleMetrics | None = None,
        peers: InstancePeers | None = None,
    ) -> None:
        self.serving = serving
        self.peers = peers
        self.settings = settings
        self._build = build
        self._tracker = tracker
        self._on_switch = on_switch
        self._metrics = metrics
        self._records: dict[str, VersionRecord] = {}
        self._candidate: ServingModel | None = None
        self._candidate_name: str | None = None
        self._loading: asyncio.Task[None] | None = None
        self._shadow: ShadowEvaluation | None = None
        self._poller: asyncio.Task[None] | None = None
        self._switching = asyncio.Lock()
        self._scanning = asyncio.Lock()
        self._unevaluated: set[str] = set()  # new valid versions no candidate was made of
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @property
    def candidate_name(self) -> str | None:
        """The version being loaded or evaluated now, if any."""
        return self._candidate_name

    # ---- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Record the versions on disk (none of them a candidate), then watch."""
        self._records[self.serving.version] = _record_of(
            self.serving.version, SERVING, self.serving.artifacts.manifest
        )
        if self.settings.base is None:
            return
        await self.scan(initial=True)
        if self.settings.poll_seconds > 0:
            self._poller = asyncio.create_task(self._poll(), name="version-watcher")

    async def close(self) -> None:
        """Stop watching and abandon any candidate."""
        self._closed = True
        for task in (self._poller, self._loading):
            if task is not None:
                task.cancel()
        self._abandon_candidate()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.scan()
            except Exception:  # noqa: BLE001 - the watcher must never stop serving
                log.exception("checking %s for new versions failed", self.settings.base)

    # ---- the request path ----------------------------------------------------------------

    def offer(
        self,
        model: ServingModel,
        windows: np.ndarray,
        series_ids: list[str] | None,
        forecasts: np.ndarray,
    ) -> None:
        """Windows ``model`` answered: the shadow evaluation samples them (O(1))."""
        shadow = self._shadow
        if shadow is not None and model is self.serving:
            shadow.offer(windows, series_ids, forecasts)

    # ---- watching ------------------------------------------------------------------------

    async def scan(self, *, initial: bool = False, evaluate: bool = True) -> None:
        """Look at the base directory once: record what changed and, with ``evaluate``, start
        the newest new valid version as the candidate. One scan at a time."""
        base = self.settings.base
        if base is None or self._closed:
            return
        async with self._scanning:
            paths = await asyncio.to_thread(list_versions, base)
            names = {p.name for p in paths}
            gone = [n for n, r in self._records.items() if n not in names and r.status != SERVING]
            for name in gone:
                del self._records[name]
                self._unevaluated.discard(name)
                if name == self._candidate_name:
                    log.info("candidate %s was withdrawn from %s", name, base)
                    self._end_candidate()
            for path in paths:
                signature = await asyncio.to_thread(_signature, path)
                known = self._records.get(path.name)
                if known is not None and (known.status != IGNORED or known.signature == signature):
                    continue
                record = await asyncio.to_thread(self._examine, path, signature)
                self._note(record, known)
                if record.status == AVAILABLE and not initial:
                    self._unevaluated.add(path.name)
            if evaluate and self._unevaluated:
                newest = max(self._unevaluated)
                self._unevaluated.clear()
                self._start_candidate(base / newest)

    def _examine(self, path: Path, signature: tuple[int, ...]) -> VersionRecord:
        """Verify a version directory without loading its model (off the loop)."""
        try:
            manifest = Manifest.load(path)
        except ArtifactError as exc:
            return VersionRecord(path.name, IGNORED, signature, reason=str(exc)).with_kind(
                exc.reason
            )
        except (OSError, ValueError) as exc:  # vanished or unreadable mid-check
            record = VersionRecord(path.name, IGNORED, signature, reason=f"{path}: {exc}")
            return record.with_kind("invalid")
        problem = _incompatibility(manifest, self.serving.artifacts.manifest)
        if manifest.version != path.name:
            record = _record_of(path.name, IGNORED, manifest, signature)
            record.reason = (
                f"{path}: its manifest names version {manifest.version!r}; a version is "
                "published under its own name (python -m training.train, or training.faults)"
            )
            return record.with_kind("invalid")
        if problem:
            record = _record_of(path.name, IGNORED, manifest, signature)
            record.reason = f"{path}: {problem}"
            return record.with_kind("incompatible")
        return _record_of(path.name, AVAILABLE, manifest, signature)

    def _note(self, record: VersionRecord, previous: VersionRecord | None) -> None:
        self._records[record.version] = record
        if record.status != IGNORED:
            return
        kind = record.kind
        if previous is not None and previous.status == IGNORED and previous.kind == kind:
            return  # the same problem, still: logged and counted once
        log.warning("ignoring version %s (%s): %s", record.version, kind, record.reason)
        if self._metrics is not None:
            self._metrics.ignored.labels(kind).inc()

    # ---- the candidate -------------------------------------------------------------------

    def _start_candidate(self, path: Path) -> None:
        peer = self.peers.verdict(path.name) if self.peers is not None else None
        if peer is not None and not peer.promote:
            self._records[path.name].status = REJECTED
            self._records[path.name].reason = f"{peer.reason}: {peer.detail}"
            log.info(
                "version %s was rejected by worker %d (%s)", path.name, peer.worker, peer.reason
            )
            return
        if self._candidate_name is not None:
            log.info("version %s replaces candidate %s", path.name, self._candidate_name)
            self._abandon_candidate()
        self._candidate_name = path.name
        self._records[path.name].status = CANDIDATE
        if self._metrics is not None:
            self._metrics.set_candidate(path.name)
        self._loading = asyncio.create_task(self._load_candidate(path), name="candidate")

    async def _load_candidate(self, path: Path) -> None:
        name = path.name
        log.info("candidate %s: loading and compiling in the background", name)
        started = self._loop.time()
        try:
            model = await _in_background_thread(self._load, path)
        except Exception as exc:  # noqa: BLE001 - a version that cannot load is ignored
            if not isinstance(exc, VersionUnusable):
                log.exception("candidate %s: loading failed", name)
                exc = VersionUnusable(f"{path}: cannot be loaded and compiled ({exc})")
            if self._candidate_name == name:
                self._end_candidate()
                record = self._records.get(name)
                if record is not None:
                    record.status, record.reason = IGNORED, str(exc)
                    self._note(record.with_kind(exc.kind), None)
            return
        if self._candidate_name != name or self._closed:
            return
        log.info("candidate %s: warm in %.1fs", name, self._loop.time() - started)
        self._candidate = model
        if self.adopt_peer_verdict():
            return
        if self.settings.promote_without_traffic:
            await self._promote(model, "warm", "promoted once warm (--promote-without-traffic)")
            return
        tracker = self._tracker()
        other = self._tracker() if tracker is not None else None
        trackers = (tracker, other) if tracker is not None and other is not None else None
        serving = self.serving
        self._shadow = ShadowEvaluation(
            lambda windows: _candidate_predict(model, windows),
            monitor=model.monitor,
            trackers=trackers,
            windows=self.settings.shadow_windows,
            max_error_ratio=self.settings.shadow_max_error_ratio,
            on_verdict=lambda verdict: self._verdict_from_thread(model, verdict),
            reference=lambda windows: _candidate_predict(serving, windows),
            reference_monitor=self._fresh_monitor(serving),
            require_detectors=serving.monitor is not None,
        )
        self._shadow.start()
        log.info(
            "candidate %s: shadow evaluation on the next %d live windows (answers not returned)",
            name,
            self.settings.shadow_windows,
        )

    def _fresh_monitor(self, model: ServingModel) -> PredictionMonitor | None:
        """Detectors with ``model``'s calibration that no traffic has touched yet."""
        spec = model.artifacts.manifest.monitor_spec()
        return None if spec is None or model.monitor is None else PredictionMonitor(spec)

    def _verdict_from_thread(self, model: ServingModel, verdict: Verdict) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_verdict, model, verdict)
        except RuntimeError:  # the loop closed: the server has shut down
            pass

    def _load(self, path: Path) -> ServingModel:
        """Load, check and compile a version (off the loop)."""
        try:
            artifacts = load_artifacts(path)
        except ArtifactError as exc:
            raise VersionUnusable(str(exc), exc.reason) from None
        problem = _incompatibility(artifacts.manifest, self.serving.artifacts.manifest)
        if problem:
            raise VersionUnusable(f"{path}: {problem}", "incompatible")
        return self._build(artifacts)

    def adopt_peer_verdict(self) -> bool:
        """Apply another worker's verdict on the candidate, if there is one (workers only)."""
        model = self._candidate
        if self.peers is None or model is None or self._closed:
            return False
        peer = self.peers.verdict(model.version)
        if peer is None:
            return False
        detail = f"{peer.detail} (verdict of worker {peer.worker})"
        self._apply_verdict(model, peer.promote, peer.reason, detail, counted=False)
        return True

    def _on_verdict(self, model: ServingModel, verdict: Verdict) -> None:
        if self._candidate is not model or self._closed:
            return
        promote, reason, detail, counted = verdict.promote, verdict.reason, verdict.detail, True
        if self.peers is not None:
            decided, counted = self.peers.publish_verdict(model.version, promote, reason, detail)
            promote, reason, detail = decided.promote, decided.reason, decided.detail
            if not counted:
                detail = f"{detail} (verdict of worker {decided.worker})"
        self._apply_verdict(model, promote, reason, detail, counted=counted)

    def _apply_verdict(
        self, model: ServingModel, promote: bool, reason: str, detail: str, *, counted: bool
    ) -> None:
        """Promote or reject the candidate. ``counted``: this worker reached the verdict, and
        counts it in the metrics (a verdict adopted from another worker is counted there)."""
        if promote:
            task = asyncio.create_task(self._promote(model, "shadow", detail, counted=counted))
            self._loading = task
            return
        if self._metrics is not None and counted:
            self._metrics.promotions.labels("rejected").inc()
            self._metrics.rejections.labels(reason).inc()
        log.warning(
            "candidate %s rejected (%s): %s; still serving %s",
            model.version,
            reason,
            detail,
            self.serving.version,
        )
        record = self._records.get(model.version)
        self._end_candidate()
        if record is not None:
            record.status, record.reason = REJECTED, f"{reason}: {detail}"

    async def _promote(
        self, model: ServingModel, trigger: str, detail: str, *, counted: bool = True
    ) -> None:
        async with self._switching:
            if self._candidate is not model or self._closed:
                return
            self._end_candidate()
            self._switch(model, trigger, detail)
            if self._metrics is not None and counted:
                self._metrics.promotions.labels("promoted").inc()

    def _end_candidate(self) -> None:
        """No candidate any more (its record's status is the caller's to set)."""
        if self._shadow is not None:
            self._shadow.stop()
        self._shadow = None
        self._candidate = None
        self._candidate_name = None
        if self._metrics is not None:
            self._metrics.set_candidate(None)

    def _abandon_candidate(self) -> None:
        name = self._candidate_name
        self._end_candidate()
        if name is not None and name in self._records:
            self._records[name].status = AVAILABLE

    # ---- switching -----------------------------------------------------------------------

    def _switch(self, model: ServingModel, trigger: str, detail: str) -> None:
        """Serve ``model`` from the next request on (one assignment: atomic on the loop)."""
        previous = self.serving
        self.serving = model
        if previous.version in self._records:
            self._records[previous.version].status = AVAILABLE
        record = self._records.get(model.version)
        if record is None:
            record = _record_of(model.version, SERVING, model.artifacts.manifest)
            self._records[model.version] = record
        record.status, record.reason = SERVING, ""
        if self._metrics is not None:
            self._metrics.switches.labels(trigger).inc()
        self._on_switch(previous, model)
        log.info(
            "now serving %s (was %s; %s): %s", model.version, previous.version, trigger, detail
        )

    async def set_serving_version(self, version: str, *, broadcast: bool = True) -> tuple[str, str]:
        """Serve ``version`` now, without shadow evaluation. Returns (new, previous). With
        peers (several workers) and ``broadcast``, every worker switches too."""
        new, previous = await self._set_serving_version(version)
        if self.peers is not None and broadcast:
            self.peers.publish_switch(new)
        return new, previous

    async def _set_serving_version(self, version: str) -> tuple[str, str]:
        async with self._switching:
            previous = self.serving.version
            if self._closed:
                raise VersionUnusable("the server is shutting down", "invalid")
            if version == previous:
                return version, previous
            base = self.settings.base
            if base is None:
                raise VersionUnusable(
                    f"the server was started on one pinned version ({previous}); start it on "
                    "the artifacts base directory to switch versions",
                    "invalid",
                )
            path = base / version
            hidden = version.startswith(".")
            if not version or hidden or Path(version).name != version or not path.is_dir():
                raise VersionNotFound(f"no version {version!r} under {base}")
            if self._candidate is not None and self._candidate.version == version:
                model = self._candidate
            else:
                record = await asyncio.to_thread(self._examine, path, ())
                if record.status == IGNORED:
                    raise VersionUnusable(record.reason, record.kind)
                model = await _in_background_thread(self._load, path)
            if self._candidate_name is not None:
                self._abandon_candidate()
            self._switch(model, "admin", "ModelAdmin.SetServingVersion")
            return version, previous

    # ---- the admin view ------------------------------------------------------------------

    async def list_versions(self) -> list[VersionRecord]:
        """Every version on disk, oldest first (a fresh look at the directory first; only the
        watcher starts candidates)."""
        await self.scan(evaluate=False)
        return [self._records[name] for name in sorted(self._records)]


# -------------------------------------------------------------------------------------------


def load_newest_valid(path: Path, *, prefer: str | None = None) -> Artifacts:
    """The version to serve first: ``path`` itself when it is a version directory, else the
    newest version under it that loads; newer ones that do not are logged and skipped (the
    watcher counts them). Raises the newest's ArtifactError when none loads.

    ``prefer``: a version under ``path`` to serve instead if it loads (the version the other
    workers of the instance serve, for a worker started again)."""
    if (path / MANIFEST_FILE).is_file() or not path.is_dir():
        return load_artifacts(path)
    if prefer is not None and (path / prefer / MANIFEST_FILE).is_file():
        try:
            return load_artifacts(path / prefer)
        except ArtifactError as exc:
            log.warning("cannot serve %s, the version the other workers serve: %s", prefer, exc)
    first_error: ArtifactError | None = None
    for version_dir in reversed(list_versions(path)):
        try:
            if not (version_dir / MANIFEST_FILE).is_file():
                raise ArtifactError(
                    f"{version_dir / MANIFEST_FILE}: missing manifest", "incomplete"
                )
            artifacts = load_artifacts(version_dir)
        except ArtifactError as exc:
            log.warning("ignoring version %s (%s): %s", version_dir.name, exc.reason, exc)
            first_error = first_error or exc
            continue
        if artifacts.version != version_dir.name:
            log.warning(
                "ignoring version %s (invalid): its manifest names version %r",
                version_dir.name,
                artifacts.version,
            )
            continue
        return artifacts
    if first_error is not None:
        raise first_error
    return load_artifacts(path)  # raises: no version directories


def _record_of(
    version: str, status: str, manifest: Manifest, signature: tuple[int, ...] = ()
) -> VersionRecord:
    return VersionRecord(
        version=version,
        status=status,
        signature=signature,
        created_at=manifest.created_at,
        test=split_metrics(manifest, "test"),
    )


def _incompatibility(manifest: Manifest, serving: Manifest) -> str:
    """Why clients of ``serving`` could not send their windows to ``manifest`` ('' if they
    could): the request contract is the features, in order, the window and the horizon."""
    if list(manifest.feature_names) != list(serving.feature_names):
        return (
            f"features {list(manifest.feature_names)} differ from the serving version's "
            f"{list(serving.feature_names)}"
        )
    if manifest.window != serving.window or manifest.horizon != serving.horizon:
        return (
            f"window {manifest.window} / horizon {manifest.horizon} differ from the serving "
            f"version's {serving.window} / {serving.horizon}"
        )
    if manifest.target != serving.target:
        return f"target {manifest.target!r} differs from the serving version's {serving.target!r}"
    return ""


def _signature(path: Path) -> tuple[int, ...]:
    """Changes when a file in the directory is added, removed, resized or rewritten."""
    try:
        entries = sorted(path.iterdir())
        parts = [path.stat().st_mtime_ns]
        for entry in entries:
            stat = entry.stat()
            parts += [stat.st_size, stat.st_mtime_ns]
        return tuple(parts)
    except OSError:
        return ()


LOADER_NICENESS = 10
"""The loading thread's nice increment: compiling a candidate yields the cores to serving."""


async def _in_background_thread(load: Callable[[Path], ServingModel], path: Path) -> ServingModel:
    """``load(path)`` on a thread of its own at a lower CPU priority (Linux: a thread's nice
    value is its own), so that loading and compiling a candidate disturbs live traffic less."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ServingModel] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def run() -> None:
        name_os_thread(LOADER_THREAD)
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
        except (OSError, AttributeError):  # not Linux, or not permitted: normal priority
            pass
        try:
            model = load(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            error = exc
            _call_soon(loop, settle, lambda: done.set_exception(error))
            return
        _call_soon(loop, settle, lambda: done.set_result(model))

    threading.Thread(target=run, name="candidate-loader", daemon=True).start()
    return await done


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[Callable[[], None]], None],
    outcome: Callable[[], None],
) -> None:
    """Hand a loader's outcome to the loop, unless the loop has closed (server shut down)."""
    try:
        loop.call_soon_threadsafe(settle, outcome)
    except RuntimeError:
        pass


def _candidate_predict(
    model: ServingModel, windows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    result = model.forecaster.predict(windows)
    return result.forecasts, result.raw_output, result.monitored
