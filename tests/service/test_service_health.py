"""grpc.health.v1: NOT_SERVING until warmed up, SERVING when ready, NOT_SERVING from shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_testkit import target_of

from service.api import SERVICE_NAME, pb, pb_grpc
from service.client import request_from_windows
from service.server import create_server

TIMEOUT = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_NAMES = ("", SERVICE_NAME)


@pytest.fixture(scope="module")
def quick_settings(settings):
    """One bucket: these tests build servers of their own, so keep each warm-up short."""
    return replace(settings, batch_buckets=(1,), max_batch_size=1)


async def statuses(channel: grpc.aio.Channel) -> dict[str, int]:
    health = health_pb2_grpc.HealthStub(channel)
    return {
        name: (
            await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        ).status
        for name in HEALTH_NAMES
    }


async def test_health_serving_only_after_warm_up(quick_settings, artifacts):
    running = await create_server(quick_settings, artifacts)
    try:
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            before = await statuses(channel)
            await running.warm_up()
            after = await statuses(channel)
    finally:
        await running.shutdown(grace=1.0)

    assert before == {"": NOT_SERVING, SERVICE_NAME: NOT_SERVING}
    assert after == {"": SERVING, SERVICE_NAME: SERVING}


async def test_health_not_serving_once_graceful_shutdown_starts(quick_settings, artifacts, windows):
    running = await create_server(quick_settings, artifacts)
    try:
        await running.warm_up()
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            await running.health.enter_graceful_shutdown()
            during = await statuses(channel)
            # Still answering while it drains: only the health status changed.
            stub = pb_grpc.ForecastServiceStub(channel)
            response = await stub.Forecast(request_from_windows(windows[:1]), timeout=TIMEOUT)
    finally:
        await running.shutdown(grace=1.0)

    assert during == {"": NOT_SERVING, SERVICE_NAME: NOT_SERVING}
    assert len(response.predictions) == 1


async def test_health_watch_sees_not_serving_when_shutdown_starts(quick_settings, artifacts):
    running = await create_server(quick_settings, artifacts)
    shutdown = None
    try:
        await running.warm_up()
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            first = await asyncio.wait_for(watch.read(), TIMEOUT)
            shutdown = asyncio.create_task(running.shutdown(grace=5.0))
            second = await asyncio.wait_for(watch.read(), TIMEOUT)
            watch.cancel()  # an open Watch would otherwise hold the drain for the whole grace
            await asyncio.wait_for(shutdown, TIMEOUT)
    finally:
        if shutdown is None:
            await running.shutdown(grace=1.0)

    assert first.status == SERVING
    assert second.status == NOT_SERVING


async def test_health_stays_not_serving_when_warm_up_ends_after_shutdown_began(
    quick_settings, artifacts
):
    """SIGTERM during warm-up: the finished warm-up must not report SERVING again."""
    running = await create_server(quick_settings, artifacts)
    try:
        async with grpc.aio.insecure_channel(target_of(running)) as channel:
            await running.health.enter_graceful_shutdown()
            await running.warm_up()
            after = await statuses(channel)
    finally:
        await running.shutdown(grace=1.0)

    assert after == {"": NOT_SERVING, SERVICE_NAME: NOT_SERVING}


async def test_health_unknown_service_is_not_found(channel):
    health = health_pb2_grpc.HealthStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_forecast_after_shutdown_is_refused(quick_settings, artifacts, windows):
    running = await create_server(quick_settings, artifacts)
    await running.warm_up()
    target = target_of(running)
    await running.shutdown(grace=1.0)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
