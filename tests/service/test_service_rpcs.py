"""Every RPC of the in-process server over real ``grpc.aio`` channels, and server reflection."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.api import SERVICE_NAME, pb
from service.client import forecasts_from_response, request_from_windows

TIMEOUT = 10.0


async def test_forecast_returns_one_prediction_per_window(stub, windows, artifacts):
    response = await stub.Forecast(request_from_windows(windows[:5]), timeout=TIMEOUT)

    assert response.model_version == artifacts.version
    assert len(response.predictions) == 5
    assert all(len(p.values) == artifacts.horizon for p in response.predictions)
    forecasts = forecasts_from_response(response)
    assert np.isfinite(forecasts).all()
    # Different windows of the series give different forecasts: nothing is collapsed or mixed up.
    assert len(np.unique(forecasts[:, 0])) == 5


async def test_forecast_is_in_target_units(stub, windows, artifacts):
    """Forecasts of the load series are near its observed level, not in scaled units."""
    response = await stub.Forecast(request_from_windows(windows[:16]), timeout=TIMEOUT)

    forecasts = forecasts_from_response(response)[:, 0]
    last_observed = windows[:16, -1, artifacts.feature_names.index("load")]
    assert np.all(np.abs(forecasts - last_observed) < 0.25 * last_observed)


async def test_forecast_splits_requests_larger_than_one_batch(stub, windows, settings):
    """A request of more windows than max_batch_size spans several model calls, still in order."""
    count = settings.max_batch_size * 2 + 3
    together = await stub.Forecast(request_from_windows(windows[:count]), timeout=TIMEOUT)
    one_by_one = [
        await stub.Forecast(request_from_windows(windows[i : i + 1]), timeout=TIMEOUT)
        for i in range(count)
    ]

    np.testing.assert_allclose(
        forecasts_from_response(together),
        np.concatenate([forecasts_from_response(r) for r in one_by_one]),
        rtol=1e-6,
    )


async def test_stream_forecast_answers_each_message(stub, windows, artifacts):
    requests = [request_from_windows(windows[i : i + 2]) for i in range(0, 6, 2)]

    responses = [r async for r in stub.StreamForecast(iter(requests), timeout=TIMEOUT)]

    assert len(responses) == 3
    assert all(r.model_version == artifacts.version for r in responses)
    assert all(len(r.predictions) == 2 for r in responses)


async def test_get_model_info_describes_the_served_version(stub, artifacts, settings):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    manifest = artifacts.manifest
    assert info.model_version == artifacts.version
    assert list(info.feature_names) == list(manifest.feature_names)
    assert info.target == manifest.target
    assert info.window == manifest.window
    assert info.horizon == manifest.horizon
    assert info.target_mode == manifest.transform.mode
    assert info.max_windows_per_request == settings.max_windows_per_request
    assert info.device == "CPU"
    assert info.created_at == manifest.created_at
    assert info.validation.mae == manifest.metrics["val"].mae
    assert info.test.persistence_mae == manifest.metrics["test"].persistence_mae
    assert info.test.windows == manifest.metrics["test"].n_windows
    assert [f.name for f in info.features] == list(manifest.feature_names)


async def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary(f"/{SERVICE_NAME}/NoSuchMethod")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _reflect(channel, request: reflection_pb2.ServerReflectionRequest, metadata=()):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=TIMEOUT)
    return [r async for r in responses]


async def test_reflection_lists_the_forecast_service(channel):
    (response,) = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {s.name for s in response.list_services_response.service}
    assert "forecast.v1.ForecastService" in names
    assert "forecast.v1.ModelAdmin" in names
    assert "grpc.health.v1.Health" in names


async def test_reflection_describes_the_forecast_service(channel):
    """Standard tooling (grpcurl describe) gets the proto file that defines the service."""
    from google.protobuf import descriptor_pb2

    (response,) = await _reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="forecast.v1.ForecastService"
        ),
    )

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    (forecast_file,) = [f for f in files if f.package == "forecast.v1"]
    services = {service.name: service for service in forecast_file.service}
    assert set(services) == {"ForecastService", "ModelAdmin"}
    methods = {m.name for m in services["ForecastService"].method}
    assert methods == {"Forecast", "StreamForecast", "GetModelInfo"}
    admin = {m.name for m in services["ModelAdmin"].method}
    assert admin == {"ListVersions", "SetServingVersion"}
