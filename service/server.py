"""Assemble and run the gRPC server: servicers, interceptors, health, reflection, TLS, shutdown.

:func:`create_server` builds the parts in dependency order, each complete when built: the health
statuses, the window queue, the metrics (reading the queue's depth), the monitor (reporting
collapse changes to the health statuses), the realized-accuracy tracker, the batcher (feeding
the metrics and the monitor, and giving the tracker the monitoring thread's time), then the gRPC
server around them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from monitoring.metrics import (
    LifecycleMetrics,
    RealizedAccuracyMetrics,
    ServingMetrics,
    start_metrics_server,
)
from monitoring.monitor import MAX_DELAY_SECONDS as MONITOR_MAX_DELAY_SECONDS
from monitoring.monitor import PredictionMonitor
from monitoring.realized import RealizedAccuracy
from service.admin import ModelAdminServicer
from service.announce import GRPC_LISTENING, METRICS_LISTENING
from service.api import (
    ADMIN_SERVICE_NAME,
    OIP_SERVICE_NAME,
    REQUEST_METHODS,
    SERVICE_NAME,
    oip_grpc,
    oip_pb,
    pb,
    pb_grpc,
)
from service.auth import BearerTokenInterceptor
from service.batching import BatchObserver, IdleHook, MicroBatcher, WindowQueue
from service.config import Settings
from service.core import ForecastCore
from service.drain import Drain, DrainInterceptor, exit_process, finish_calls, margin_seconds
from service.errors import Recorder, StatusInterceptor
from service.forecaster import BatchResult, Forecaster
from service.lifecycle import InstancePeers, LifecycleSettings, ModelLifecycle, ServingModel
from service.protocols.oip_v2 import InferenceServicer
from service.servicer import ForecastServicer, model_info
from service.workers import OwnState, WorkerContext, WorkerLink, WorkerPeers
from training.artifacts import Artifacts
from training.intervals import REPORTED_LEVELS
from training.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)

HEALTH_SERVICES = ("", SERVICE_NAME)
CANDIDATE_COMPILE_DUTY = 0.5
"""The share of its thread's time a candidate's compilation takes (it pauses in between)."""


class ServingHealth:
    """What gRPC health reports: NOT_SERVING until warm-up, SERVING after it, NOT_SERVING from
    the start of a drain.

    With ``--on-collapse unready`` the forecast service's status also follows the collapse
    detector (:meth:`on_collapse_change` is the monitor's callback). Only
    ``forecast.v1.ForecastService`` changes; the server-wide ``""`` status stays SERVING, so a
    readiness probe on the service name takes the replica out of rotation while a liveness
    probe on ``""`` does not restart it.

    The Open Inference Protocol's ServerReady and ModelReady report the same two statuses
    (:meth:`is_serving`).

    In a worker of several (:mod:`service.workers`), both also wait for every worker to be warm,
    and with ``unready`` any worker's collapse counts (:meth:`on_peers`).
    """

    def __init__(self, *, collapse_unready: bool) -> None:
        self.servicer = health.aio.HealthServicer()
        self.collapse_unready = collapse_unready
        self.collapsed = False  # the collapse detector's state, as last reported
        self.warm = False
        # Every worker of the instance has been warm (or there is only this one). Once true it
        # stays true: a worker started again later does not take the others out of rotation.
        self.peers_warm = True
        self.peer_collapsed = False  # some worker of the instance has collapsed
        self._instance_warmed = False  # every worker has been warm at least once
        self.draining = False
        self._loop = asyncio.get_running_loop()
        self._updates: set[asyncio.Task[None]] = set()  # referenced until done

    async def set_serving(self, serving: bool, services: tuple[str, ...] = HEALTH_SERVICES) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in services:
            await self.servicer.set(name, status)

    async def is_serving(self, service: str = "") -> bool:
        """Whether gRPC health reports ``service`` (``""``: the server) SERVING now."""
        answer = await self.servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def warmed_up(self) -> None:
        """SERVING, except the forecast service while collapsed (with ``unready``)."""
        self.warm = True
        await self._apply()

    async def on_peers(self, all_warm: bool, any_collapsed: bool) -> None:
        """The instance's other workers, as they last reported (a worker's link calls this)."""
        self._instance_warmed = self._instance_warmed or all_warm
        if (self._instance_warmed, any_collapsed) == (self.peers_warm, self.peer_collapsed):
            return
        self.peers_warm, self.peer_collapsed = self._instance_warmed, any_collapsed
        await self._apply()

    async def _apply(self) -> None:
        if self.draining:
            return
        ready = self.warm and self.peers_warm
        collapsed = self.collapse_unready and (self.collapsed or self.peer_collapsed)
        await self.set_serving(ready, ("",))
        await self.set_serving(ready and not collapsed, (SERVICE_NAME,))

    def on_collapse_change(self, collapsed: bool) -> None:
        """Called on the monitoring thread, in the order of the transitions; the health
        update runs on the event loop."""
        if self.collapse_unready:
            self.collapsed = collapsed
            self._loop.call_soon_threadsafe(self._schedule_collapse_status, collapsed)

    def _schedule_collapse_status(self, collapsed: bool) -> None:
        task = self._loop.create_task(self._follow_collapse(collapsed))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def drain(self) -> None:
        """NOT_SERVING for every service, for good: the server is shutting down."""
        self.draining = True
        await self.servicer.enter_graceful_shutdown()

    async def _follow_collapse(self, collapsed: bool) -> None:
        if self.draining:
            return
        log.warning(
            "output %s: %s health -> %s",
            "collapsed" if collapsed else "recovered",
            SERVICE_NAME,
            "NOT_SERVING" if collapsed else "SERVING",
        )
        await self._apply()


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    status: ServingHealth
    batcher: MicroBatcher
    lifecycle: ModelLifecycle
    realized: RealizedAccuracy | None = None
    stop_warm_up: threading.Event = field(default_factory=threading.Event)
    drain: Drain = field(default_factory=Drain)  # the one its DrainInterceptor counts into

    @property
    def health(self) -> health.aio.HealthServicer:
        return self.status.servicer

    @property
    def forecaster(self) -> Forecaster:
        """The serving version's forecaster."""
        return self.lifecycle.serving.forecaster

    @property
    def monitor(self) -> PredictionMonitor | None:
        """The serving version's detectors."""
        return self.lifecycle.serving.monitor

    async def warm_up(self) -> None:
        """Compile every batch bucket off the event loop, then report SERVING."""
        await asyncio.get_running_loop().run_in_executor(
            None, self.forecaster.warm_up, self.stop_warm_up
        )
        await self.status.warmed_up()

    async def finish(self, grace: float) -> None:
        """NOT_SERVING, refuse new RPCs with UNAVAILABLE, let in-flight ones finish within
        ``grace`` (less a margin), close the batcher. The server still listens, refusing every
        call, until it is stopped or the process ends (see :mod:`service.drain`)."""
        self.stop_warm_up.set()
        await self.lifecycle.close()
        await self.status.drain()
        await finish_calls(self.drain, grace)
        await self.batcher.close()

    async def shutdown(self, grace: float) -> None:
        """:meth:`finish`, then stop the server within the rest of ``grace``."""
        await self.finish(grace)
        await self.server.stop(margin_seconds(grace) / 2)


async def create_server(
    settings: Settings,
    artifacts: Artifacts,
    *,
    device: str = "CPU",
    observers: tuple[BatchObserver, ...] = (),
    registry: CollectorRegistry | None = None,
    peers: InstancePeers | None = None,
) -> RunningServer:
    """Build, bind and start the server (health NOT_SERVING until :meth:`RunningServer.warm_up`).

    Bind ``address`` with port 0 to let the OS pick a free port; the chosen port is returned.
    With a ``registry``, serving metrics (and, unless ``settings.monitoring`` is off, the
    collapse and drift detectors, and unless ``settings.realized_tracking`` is off, the
    realized-accuracy counters) are registered on it. ``observers`` also see every batch.
    ``artifacts`` is the version served first; with ``settings.artifacts`` a base directory,
    versions published there later are evaluated and promoted (:mod:`service.lifecycle`).
    With ``peers`` the server is one worker of several (:mod:`service.workers`): it shares its
    port (``SO_REUSEPORT``), its verdicts on candidates and its admin switches.
    """
    status = ServingHealth(collapse_unready=settings.on_collapse == "unready")
    queue = WindowQueue(settings.max_queue_windows)
    metrics = _serving_metrics(registry, artifacts, device, queue)
    models = _ModelFactory(settings, device, status)
    lifecycle = ModelLifecycle(
        models.build(artifacts),
        _lifecycle_settings(settings),
        build=models.build_warm,
        tracker=lambda: _realized_tracker(settings, lifecycle.serving.artifacts),
        on_switch=lambda previous, new: _on_switch(new, metrics, status, device),
        metrics=LifecycleMetrics(registry) if registry is not None else None,
        peers=peers,
    )
    models.lifecycle = lifecycle
    if registry is not None:
        registry.register(_ServingDetectors(lifecycle))
    realized = _realized_accuracy(settings, artifacts, registry)
    batcher = MicroBatcher(
        lambda windows: lifecycle.serving.forecaster.predict(windows),
        queue,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        observers=(*observers, *_batch_observers(metrics, lifecycle, realized)),
        on_idle=_idle_hook(lifecycle, realized),
    )
    drain = Drain()
    record = _rpc_recorder(metrics) if metrics is not None else None
    server = _grpc_server(settings, record, drain, reuse_port=peers is not None)
    _add_services(server, settings, lifecycle, batcher, status, realized)
    port, security = _bind(server, settings)
    running = RunningServer(server, port, status, batcher, lifecycle, realized, drain=drain)
    await status.set_serving(False)
    await server.start()
    batcher.start()
    await lifecycle.start()
    log.info(GRPC_LISTENING + ", model %s", settings.address, port, security, artifacts.version)
    return running


async def serve(
    settings: Settings, artifacts: Artifacts, *, device: str, worker: WorkerContext | None = None
) -> NoReturn:
    """Run until SIGTERM/SIGINT, then drain within the grace period and end the process with
    exit code 0. As one ``worker`` of several, /metrics goes to a private loopback port that
    the supervisor merges, and the state is shared with the other workers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    peers = WorkerPeers(worker) if worker is not None else None
    running = await create_server(
        settings, artifacts, device=device, registry=registry, peers=peers
    )
    metrics_server, metrics_port = None, -1
    if settings.metrics_port >= 0:
        address, port = (
            ("127.0.0.1", 0)
            if worker is not None
            else (settings.metrics_address, settings.metrics_port)
        )
        metrics_server, metrics_port = start_metrics_server(registry, address, port)
        if worker is None:
            log.info(METRICS_LISTENING, address, metrics_port)
    link = _worker_link(worker, running, metrics_port) if worker is not None else None
    warm = asyncio.create_task(running.warm_up())
    await stop.wait()
    log.info("shutdown requested: NOT_SERVING, draining for up to %.1fs", settings.grace_seconds)
    warm.cancel()
    await running.finish(settings.grace_seconds)
    if link is not None:
        await link.close()
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("drained; exiting")
    exit_process()  # not server.stop(): it would cancel the calls that race it


def _worker_link(worker: WorkerContext, running: RunningServer, metrics_port: int) -> WorkerLink:
    """Share this worker's state with the instance, and follow the instance's."""

    def own_state() -> OwnState:
        monitor = running.monitor
        status, lifecycle = running.status, running.lifecycle
        return OwnState(
            warm=status.warm,
            collapsed=monitor is not None and monitor.collapse.collapsed,
            serving=lifecycle.serving.version,
            draining=status.draining,
            candidate=lifecycle.candidate_name or "",
        )

    async def switch_to(version: str) -> object:
        return await running.lifecycle.set_serving_version(version, broadcast=False)

    link = WorkerLink(
        worker,
        port=running.port,
        metrics_port=metrics_port,
        own_state=own_state,
        on_peers=running.status.on_peers,
        adopt_verdict=running.lifecycle.adopt_peer_verdict,
        switch_to=switch_to,
    )
    link.start()
    return link


# -------------------------------------------------------------------------------------------
# Parts of create_server, in the order it builds them
# -------------------------------------------------------------------------------------------


def _serving_metrics(
    registry: CollectorRegistry | None, artifacts: Artifacts, device: str, queue: WindowQueue
) -> ServingMetrics | None:
    if registry is None:
        return None
    return ServingMetrics(
        registry,
        methods=REQUEST_METHODS,
        model_labels=_model_labels(artifacts, device),
        queue_depth=lambda: queue.depth,
    )


def _model_labels(artifacts: Artifacts, device: str) -> dict[str, str]:
    return {
        "version": artifacts.version,
        "target": artifacts.manifest.target,
        "window": str(artifacts.window),
        "horizon": str(artifacts.horizon),
        "target_mode": artifacts.manifest.transform.mode,
        "device": device,
    }


class _ModelFactory:
    """Builds a :class:`ServingModel` of a version: forecaster, model info and detectors, the
    detectors reporting collapse changes to health while their version serves."""

    def __init__(self, settings: Settings, device: str, status: ServingHealth) -> None:
        self.settings = settings
        self.device = device
        self.status = status
        self.lifecycle: ModelLifecycle | None = None  # set once built around the first model

    def build(self, artifacts: Artifacts) -> ServingModel:
        settings = self.settings
        forecaster = Forecaster(
            artifacts, buckets=settings.batch_buckets, jit_compile=settings.jit_compile
        )
        info = model_info(
            forecaster,
            max_windows_per_request=settings.max_windows_per_request,
            device=self.device,
        )
        model = ServingModel(artifacts, forecaster, info)

        def on_collapse_change(collapsed: bool) -> None:
            if self.lifecycle is None or self.lifecycle.serving is model:
                self.status.on_collapse_change(collapsed)

        model.monitor = _prediction_monitor(settings, artifacts, on_collapse_change)
        return model

    def build_warm(self, artifacts: Artifacts) -> ServingModel:
        """Build and compile every batch bucket (a candidate, off the event loop), at
        ``CANDIDATE_COMPILE_DUTY`` of the thread's time so live traffic keeps the cores."""
        model = self.build(artifacts)
        model.forecaster.warm_up(duty=CANDIDATE_COMPILE_DUTY)
        return model


def _lifecycle_settings(settings: Settings) -> LifecycleSettings:
    pinned = (Path(settings.artifacts) / MANIFEST_FILE).is_file()
    return LifecycleSettings(
        base=None if pinned else Path(settings.artifacts),
        poll_seconds=settings.poll_seconds,
        shadow_windows=settings.shadow_windows,
        shadow_max_error_ratio=settings.shadow_max_error_ratio,
        promote_without_traffic=settings.promote_without_traffic,
    )


def _on_switch(
    model: ServingModel, metrics: ServingMetrics | None, status: ServingHealth, device: str
) -> None:
    """The serving version changed: its labels, and health from its detectors."""
    if metrics is not None:
        metrics.set_model(_model_labels(model.artifacts, device))
    collapsed = model.monitor is not None and model.monitor.collapse.collapsed
    if status.collapsed != collapsed:
        status.on_collapse_change(collapsed)


class _ServingDetectors(Collector):
    """The serving version's detectors: the exported collapse and drift metrics follow it."""

    def __init__(self, lifecycle: ModelLifecycle) -> None:
        self._lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        monitor = self._lifecycle.serving.monitor
        if monitor is not None:
            yield from monitor.collect()


def _prediction_monitor(
    settings: Settings,
    artifacts: Artifacts,
    on_collapse_change: Callable[[bool], None],
) -> PredictionMonitor | None:
    """The collapse and drift detectors of a version; None with monitoring off or when the
    manifest has not calibrated them."""
    if not settings.monitoring:
        return None
    spec = artifacts.manifest.monitor_spec()
    if spec is None:
        log.warning(
            "collapse/drift detectors of %s off: manifest has no 'monitoring' calibration "
            "section (retrain to calibrate them)",
            artifacts.version,
        )
        return None
    return PredictionMonitor(spec, on_collapse_change=on_collapse_change)


def _realized_tracker(settings: Settings, artifacts: Artifacts) -> RealizedAccuracy | None:
    """A series tracker shaped like ``artifacts``' requests; None with ``--realized-tracking``
    off or a window of one row."""
    if not settings.realized_tracking or artifacts.window < 2:
        return None
    return RealizedAccuracy(
        window=artifacts.window,
        horizon=artifacts.horizon,
        n_features=len(artifacts.feature_names),
        target_index=artifacts.manifest.transform.target_index,
        max_series=settings.max_tracked_series,
        levels=REPORTED_LEVELS if artifacts.manifest.intervals is not None else (),
    )


def _realized_accuracy(
    settings: Settings, artifacts: Artifacts, registry: CollectorRegistry | None
) -> RealizedAccuracy | None:
    """Series tracking and scoring, its counters registered on ``registry``; None without a
    registry or with ``--realized-tracking`` off (series ids are still checked)."""
    if registry is None or not settings.realized_tracking:
        return None
    if artifacts.window < 2:
        log.warning("realized accuracy off: a window of one row never continues another")
        return None
    realized = _realized_tracker(settings, artifacts)
    assert realized is not None
    RealizedAccuracyMetrics(registry, realized.totals)
    return realized


def _batch_observers(
    metrics: ServingMetrics | None,
    lifecycle: ModelLifecycle,
    realized: RealizedAccuracy | None,
) -> tuple[BatchObserver, ...]:
    observers: list[BatchObserver] = []
    if metrics is not None:
        observers.append(lambda result: metrics.record_batch(len(result.forecasts)))

    def observe(result: BatchResult) -> None:
        """The serving version's detectors see its batches (a batch the previous version
        finished after a switch is not theirs)."""
        model = lifecycle.serving
        if model.monitor is None or result.version != model.version:
            return
        rows = result.monitored if result.monitored is not None else result.inputs[:, -1, :]
        model.monitor.observe(rows, result.raw_output, result.forecasts)

    observers.append(observe)
    if realized is not None:
        # The windows come from the servicer once answered; the monitoring thread scores them
        # in its own time, between batches.
        observers.append(lambda result: realized.poll())
    return tuple(observers)


def _idle_hook(lifecycle: ModelLifecycle, realized: RealizedAccuracy | None) -> IdleHook:
    """What the monitoring thread does when traffic pauses: apply what the serving version's
    detectors buffer, and score what waits."""

    def idle() -> None:
        monitor = lifecycle.serving.monitor
        if monitor is not None:
            monitor.flush()
        if realized is not None:
            realized.flush()

    delays = [MONITOR_MAX_DELAY_SECONDS] + ([realized.max_delay] if realized else [])
    return IdleHook(idle, min(delays))


def _rpc_recorder(metrics: ServingMetrics) -> Recorder:
    """Forecast RPCs and the Open Inference Protocol's ModelInfer go into the request metrics;
    health, reflection and the protocol's liveness, readiness and metadata calls do not (probes
    would otherwise dilute error rates and satisfy traffic guards)."""

    def record(method: str, code: grpc.StatusCode, seconds: float) -> None:
        if method in REQUEST_METHODS:
            metrics.record_rpc(method, code.name, seconds)

    return record


def _grpc_server(
    settings: Settings, record: Recorder | None, drain: Drain, *, reuse_port: bool
) -> grpc.aio.Server:
    # Outermost first: drain refusals go through the status mapping and the request metrics.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        StatusInterceptor(record),
        DrainInterceptor(drain),
    ]
    if settings.auth_token or settings.admin_token:
        interceptors.append(
            BearerTokenInterceptor(settings.auth_token, admin_token=settings.admin_token)
        )
    return grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Only workers of one instance share a port; a lone server's port stays its own.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )


def _add_services(
    server: grpc.aio.Server,
    settings: Settings,
    lifecycle: ModelLifecycle,
    batcher: MicroBatcher,
    status: ServingHealth,
    realized: RealizedAccuracy | None,
) -> None:
    """The forecast and admin services, the Open Inference Protocol (v2) service in front of the
    same core, gRPC health and reflection."""
    core = ForecastCore(
        lifecycle,
        batcher,
        max_windows_per_request=settings.max_windows_per_request,
        realized=realized,
    )
    forecast = ForecastServicer(core)
    pb_grpc.add_ForecastServiceServicer_to_server(forecast, server)  # type: ignore[no-untyped-call]
    inference = InferenceServicer(
        core,
        model_name=settings.model_name,
        server_ready=status.is_serving,
        model_ready=lambda: status.is_serving(SERVICE_NAME),
    )
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)  # type: ignore[no-untyped-call]
    admin = ModelAdminServicer(lifecycle)
    pb_grpc.add_ModelAdminServicer_to_server(admin, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(status.servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            OIP_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
        pool=_reflection_pool(
            pb.DESCRIPTOR, oip_pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR
        ),
    )


def _reflection_pool(*files: FileDescriptor) -> descriptor_pool.DescriptorPool:
    """One pool with every served file and its imports, for reflection (which reads one pool):
    the Open Inference Protocol's file is not in protobuf's default pool (see
    :mod:`service.protogen`)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool


def _bind(server: grpc.aio.Server, settings: Settings) -> tuple[int, str]:
    """Bind ``settings.address``: the bound port, and the security it uses for the log line."""
    credentials = _credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.address)
        else:
            port = server.add_secure_port(settings.address, credentials)
    except RuntimeError:  # grpcio raises this when the address is taken
        port = 0
    if port == 0:
        raise OSError(f"cannot bind gRPC address {settings.address} (in use or not permitted)")
    security = "TLS" if credentials else "plaintext"
    if settings.tls_client_ca:
        security += ", mTLS"
    return port, security


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
