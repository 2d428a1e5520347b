"""Monitoring wired into a real in-process gRPC server: counters match traffic, and
``--on-collapse`` decides whether a collapsed model also turns health NOT_SERVING."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from service.api import SERVICE_NAME, pb, pb_grpc
from service.client import request_from_windows
from service.config import Settings
from service.server import create_server
from training.artifacts import load_artifacts
from training.data import synthetic_series
from training.faults import zero_head
from training.replay import held_out_windows

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(
        address="127.0.0.1:0", metrics_port=-1, batch_buckets=(1, 8, 32), max_batch_size=32
    )


@pytest.fixture(scope="module")
def windows(trained_version, tiny_training_args):
    artifacts = load_artifacts(trained_version)
    steps = int(tiny_training_args[tiny_training_args.index("--synthetic-steps") + 1])
    return held_out_windows(
        synthetic_series(steps),
        window=artifacts.window,
        horizon=artifacts.horizon,
        val_fraction=0.15,
        test_fraction=0.15,
    )


async def _serve_and_send(settings, version_dir, windows, *, per_request=8, bad_requests=0):
    registry = CollectorRegistry()
    running = await create_server(settings, load_artifacts(version_dir), registry=registry)
    try:
        await running.warm_up()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.ForecastServiceStub(channel)
            calls = [
                stub.Forecast(request_from_windows(windows[lo : lo + per_request]))
                for lo in range(0, len(windows), per_request)
            ]
            await asyncio.gather(*calls)
            for _ in range(bad_requests):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Forecast(pb.ForecastRequest())
            # The monitor runs after responses are sent; with no scrape, the service applies
            # its buffer once traffic pauses.
            deadline = asyncio.get_running_loop().time() + 10.0
            while running.monitor is not None and running.monitor.collapse.pred.count < len(
                windows
            ):
                assert asyncio.get_running_loop().time() < deadline, "windows never applied"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)  # the health update that scheduled on this loop
            health = health_pb2_grpc.HealthStub(channel)
            status = (
                await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            ).status
            server_wide = (await health.Check(health_pb2.HealthCheckRequest())).status
            assert server_wide == SERVING  # liveness is never affected by a collapse
        assert (
            registry.get_sample_value(  # probes are not forecast traffic
                "forecast_requests_total", {"method": "Check", "code": "OK"}
            )
            is None
        )
        return registry, status, len(calls)
    finally:
        await running.shutdown(1.0)


def test_counters_match_the_traffic_sent(settings, trained_version, windows):
    registry, status, n_calls = asyncio.run(
        _serve_and_send(settings, trained_version, windows[:200], bad_requests=3)
    )

    get = registry.get_sample_value
    assert get("forecast_windows_total") == 200
    assert get("forecast_requests_total", {"method": "Forecast", "code": "OK"}) == n_calls
    assert get("forecast_requests_total", {"method": "Forecast", "code": "INVALID_ARGUMENT"}) == 3
    assert get("forecast_batch_size_sum") == 200
    assert get("forecast_monitored_windows_total") == 200
    assert get("forecast_output_collapsed") == 0
    assert status == SERVING


@pytest.mark.parametrize(("action", "expected"), [("alert", SERVING), ("unready", NOT_SERVING)])
def test_collapsed_model_health_follows_on_collapse(
    settings, trained_version, windows, tmp_path, action, expected
):
    broken = zero_head(trained_version, tmp_path)

    registry, status, _ = asyncio.run(
        _serve_and_send(dataclasses.replace(settings, on_collapse=action), broken, windows[:200])
    )

    assert registry.get_sample_value("forecast_output_collapsed") == 1
    assert status == expected


def test_monitoring_off_keeps_serving_metrics_only(settings, trained_version, windows):
    registry, _, _ = asyncio.run(
        _serve_and_send(
            dataclasses.replace(settings, monitoring=False), trained_version, windows[:40]
        )
    )

    assert registry.get_sample_value("forecast_windows_total") == 40
    assert registry.get_sample_value("forecast_output_collapsed") is None
    assert np.isfinite(registry.get_sample_value("forecast_batch_size_count"))
