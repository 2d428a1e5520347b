"""Assemble and run the gRPC server: servicers, interceptors, health, reflection, TLS, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from monitoring.metrics import ServingMetrics, start_metrics_server
from monitoring.monitor import PredictionMonitor
from service.announce import GRPC_LISTENING, METRICS_LISTENING
from service.api import SERVICE_NAME, pb, pb_grpc
from service.auth import BearerTokenInterceptor
from service.batching import BatchObserver, MicroBatcher
from service.config import Settings
from service.errors import Recorder, StatusInterceptor
from service.forecaster import BatchResult, Forecaster
from service.servicer import ForecastServicer, model_info
from training.artifacts import Artifacts

log = logging.getLogger(__name__)

HEALTH_SERVICES = ("", SERVICE_NAME)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    batcher: MicroBatcher
    forecaster: Forecaster
    monitor: PredictionMonitor | None = None
    collapse_unready: bool = False
    draining: bool = False
    stop_warm_up: threading.Event = field(default_factory=threading.Event)

    async def set_serving(self, serving: bool, services: tuple[str, ...] = HEALTH_SERVICES) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in services:
            await self.health.set(name, status)

    async def warm_up(self) -> None:
        """Compile every batch bucket off the event loop, then report SERVING."""
        await asyncio.get_running_loop().run_in_executor(
            None, self.forecaster.warm_up, self.stop_warm_up
        )
        if self.draining:
            return
        await self.set_serving(True, ("",))
        await self.set_serving(not self._collapsed(), (SERVICE_NAME,))

    def _collapsed(self) -> bool:
        monitor = self.monitor
        return self.collapse_unready and monitor is not None and monitor.collapse.collapsed

    async def on_collapse_change(self, collapsed: bool) -> None:
        """With ``--on-collapse unready``: the service's health is NOT_SERVING while collapsed.

        Only ``forecast.v1.ForecastService`` changes; the server-wide ``""`` status stays
        SERVING, so a readiness probe on the service name takes the replica out of rotation
        while a liveness probe on ``""`` does not restart it.
        """
        if self.collapse_unready and not self.draining:
            log.warning(
                "output %s: %s health -> %s",
                "collapsed" if collapsed else "recovered",
                SERVICE_NAME,
                "NOT_SERVING" if collapsed else "SERVING",
            )
            await self.set_serving(not collapsed, (SERVICE_NAME,))

    async def shutdown(self, grace: float) -> None:
        """NOT_SERVING, stop taking RPCs, let in-flight ones finish within ``grace``, stop."""
        self.draining = True
        self.stop_warm_up.set()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.batcher.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None:
        return None
    key = Path(settings.tls_key).read_bytes()
    cert = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def create_server(
    settings: Settings,
    artifacts: Artifacts,
    *,
    device: str = "CPU",
    observers: tuple[BatchObserver, ...] = (),
    record: Recorder | None = None,
    registry: CollectorRegistry | None = None,
) -> RunningServer:
    """Build, bind and start the server (health NOT_SERVING until :meth:`warm_up`).

    Bind ``address`` with port 0 to let the OS pick a free port; the chosen port is returned.
    With a ``registry``, serving metrics (and, unless ``settings.monitoring`` is off, the
    collapse and drift detectors) are registered on it.
    """
    forecaster = Forecaster(
        artifacts, buckets=settings.batch_buckets, jit_compile=settings.jit_compile
    )
    loop = asyncio.get_running_loop()
    holder: list[RunningServer] = []
    metrics = monitor = None
    if registry is not None:
        metrics = ServingMetrics(registry, model_labels=_model_labels(artifacts, device))
        observers = (*observers, lambda result: metrics.record_batch(len(result.forecasts)))
        record = _chain_recorders(record, metrics)
        if settings.monitoring:
            monitor = _prediction_monitor(
                artifacts,
                lambda collapsed: loop.call_soon_threadsafe(
                    lambda: holder and loop.create_task(holder[0].on_collapse_change(collapsed))
                ),
            )
        if monitor is not None:
            registry.register(monitor)
            observers = (*observers, _monitor_observer(monitor))
    batcher = MicroBatcher(
        forecaster.predict,
        max_batch_size=settings.max_batch_size,
        max_queue_windows=settings.max_queue_windows,
        max_wait_s=settings.max_wait_ms / 1000.0,
        observers=observers,
        on_idle=monitor.flush if monitor is not None else None,
    )
    if metrics is not None:
        metrics.queue_depth.set_function(lambda: batcher.queue_depth)
    interceptors: list[grpc.aio.ServerInterceptor] = [StatusInterceptor(record)]
    if settings.auth_token:
        interceptors.append(BearerTokenInterceptor(settings.auth_token))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    info = model_info(
        forecaster, max_windows_per_request=settings.max_windows_per_request, device=device
    )
    pb_grpc.add_ForecastServiceServicer_to_server(
        ForecastServicer(
            forecaster,
            batcher,
            max_windows_per_request=settings.max_windows_per_request,
            model_info=info,
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
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
    running = RunningServer(
        server,
        port,
        health_servicer,
        batcher,
        forecaster,
        monitor=monitor,
        collapse_unready=settings.on_collapse == "unready",
    )
    holder.append(running)
    await running.set_serving(False)
    await server.start()
    batcher.start()
    security = "TLS" if credentials else "plaintext"
    if settings.tls_client_ca:
        security += ", mTLS"
    log.info(GRPC_LISTENING + ", model %s", settings.address, port, security, artifacts.version)
    return running


async def serve(
    settings: Settings,
    artifacts: Artifacts,
    *,
    device: str,
    observers: tuple[BatchObserver, ...] = (),
    record: Recorder | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain within the grace period. Returns the exit code."""
    registry = CollectorRegistry()
    running = await create_server(
        settings, artifacts, device=device, observers=observers, record=record, registry=registry
    )
    metrics_server = None
    if settings.metrics_port >= 0:
        metrics_server, metrics_port = start_metrics_server(
            registry, settings.metrics_address, settings.metrics_port
        )
        log.info(METRICS_LISTENING, settings.metrics_address, metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    warm = asyncio.create_task(running.warm_up())
    await stop.wait()
    log.info("shutdown requested: NOT_SERVING, draining for up to %.1fs", settings.grace_seconds)
    warm.cancel()
    await running.shutdown(settings.grace_seconds)
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("drained; exiting")
    return 0


def _model_labels(artifacts: Artifacts, device: str) -> dict[str, str]:
    return {
        "version": artifacts.version,
        "target": artifacts.manifest.target,
        "window": str(artifacts.window),
        "horizon": str(artifacts.horizon),
        "target_mode": artifacts.manifest.transform.mode,
        "device": device,
    }


FORECAST_METHODS = frozenset(pb.DESCRIPTOR.services_by_name["ForecastService"].methods_by_name)


def _chain_recorders(record: Recorder | None, metrics: ServingMetrics) -> Recorder:
    """Forecast RPCs go into the request metrics; health and reflection calls do not (probes
    would otherwise dilute error rates and satisfy traffic guards)."""

    def chained(method: str, code: grpc.StatusCode, seconds: float) -> None:
        if method in FORECAST_METHODS:
            metrics.record_rpc(method, code.name, seconds)
        if record is not None:
            record(method, code, seconds)

    return chained


def _prediction_monitor(artifacts: Artifacts, on_change) -> PredictionMonitor | None:
    spec = artifacts.manifest.monitor_spec()
    if spec is None:
        log.warning(
            "collapse/drift detectors off: manifest has no 'monitoring' calibration section "
            "(retrain to calibrate them)"
        )
        return None
    return PredictionMonitor(spec, on_collapse_change=on_change)


def _monitor_observer(monitor: PredictionMonitor) -> BatchObserver:
    def observe(result: BatchResult) -> None:
        monitor.observe(result.inputs[:, -1, :], result.raw_output, result.forecasts)

    return observe
