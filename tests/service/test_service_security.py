"""TLS, mutual TLS and bearer-token auth, with certificates generated for the test session."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_testkit import client_cli, start_server, target_of

from service.api import pb, pb_grpc
from service.client import channel_credentials, request_from_windows

TIMEOUT = 10.0
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def secure_settings(settings):
    """One bucket per server: this module starts three of them."""
    return replace(settings, batch_buckets=(1,), max_batch_size=1)


def serve_for_module(aio, settings, artifacts):
    running = aio.run(start_server(settings, artifacts))
    yield running
    aio.run(running.shutdown(grace=1.0))


@pytest.fixture(scope="module")
def tls_server(aio, secure_settings, artifacts, pki):
    settings = replace(secure_settings, tls_cert=pki.server_cert, tls_key=pki.server_key)
    yield from serve_for_module(aio, settings, artifacts)


@pytest.fixture(scope="module")
def mtls_server(aio, secure_settings, artifacts, pki):
    settings = replace(
        secure_settings,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_cert,
    )
    yield from serve_for_module(aio, settings, artifacts)


@pytest.fixture(scope="module")
def token_server(aio, secure_settings, artifacts):
    yield from serve_for_module(aio, replace(secure_settings, auth_token=TOKEN), artifacts)


async def forecast_and_info(channel: grpc.aio.Channel, windows, metadata=()):
    stub = pb_grpc.ForecastServiceStub(channel)
    response = await stub.Forecast(
        request_from_windows(windows[:2]), metadata=metadata, timeout=TIMEOUT
    )
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=TIMEOUT)
    return response, info


async def refused(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


# -------------------------------------------------------------------------------------------
# TLS
# -------------------------------------------------------------------------------------------


async def test_tls_client_trusting_the_ca_is_served(tls_server, pki, windows, artifacts):
    credentials = channel_credentials(ca=pki.ca_cert)
    async with grpc.aio.secure_channel(target_of(tls_server), credentials) as channel:
        response, info = await forecast_and_info(channel, windows)

    assert len(response.predictions) == 2
    assert info.model_version == artifacts.version


async def test_tls_client_verifies_server_name(tls_server, pki, windows):
    """The certificate names localhost as well as 127.0.0.1."""
    credentials = channel_credentials(ca=pki.ca_cert)
    async with grpc.aio.secure_channel(f"localhost:{tls_server.port}", credentials) as channel:
        response, _ = await forecast_and_info(channel, windows)

    assert len(response.predictions) == 2


async def test_tls_server_rejects_plaintext_client(tls_server):
    async with grpc.aio.insecure_channel(target_of(tls_server)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        code = await refused(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT))

    assert code == grpc.StatusCode.UNAVAILABLE


async def test_tls_client_rejects_server_signed_by_unknown_ca(tls_server, pki):
    credentials = channel_credentials(ca=pki.other_ca_cert)
    async with grpc.aio.secure_channel(target_of(tls_server), credentials) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        code = await refused(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT))

    assert code == grpc.StatusCode.UNAVAILABLE


# -------------------------------------------------------------------------------------------
# mTLS
# -------------------------------------------------------------------------------------------


async def test_mtls_client_with_certificate_is_served(mtls_server, pki, windows, artifacts):
    credentials = channel_credentials(ca=pki.ca_cert, cert=pki.client_cert, key=pki.client_key)
    async with grpc.aio.secure_channel(target_of(mtls_server), credentials) as channel:
        response, info = await forecast_and_info(channel, windows)

    assert len(response.predictions) == 2
    assert info.model_version == artifacts.version


async def test_mtls_server_rejects_client_without_certificate(mtls_server, pki):
    credentials = channel_credentials(ca=pki.ca_cert)
    async with grpc.aio.secure_channel(target_of(mtls_server), credentials) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        code = await refused(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT))

    assert code == grpc.StatusCode.UNAVAILABLE


async def test_mtls_server_rejects_plaintext_client(mtls_server):
    async with grpc.aio.insecure_channel(target_of(mtls_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        code = await refused(health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT))

    assert code == grpc.StatusCode.UNAVAILABLE


# -------------------------------------------------------------------------------------------
# Bearer token
# -------------------------------------------------------------------------------------------

BAD_METADATA = {
    "missing": (),
    "wrong": (("authorization", "Bearer not-the-token"),),
    "no scheme": (("authorization", TOKEN),),
    "prefix of the token": (("authorization", f"Bearer {TOKEN[:-1]}"),),
}


async def all_rpcs_codes(channel, windows, metadata) -> dict[str, grpc.StatusCode]:
    """The status each RPC of the service (and reflection) ends with under ``metadata``."""
    stub = pb_grpc.ForecastServiceStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = request_from_windows(windows[:1])

    async def code(call) -> grpc.StatusCode:
        try:
            if isinstance(call, grpc.aio.UnaryUnaryCall):
                await call
            else:
                async for _ in call:
                    pass
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    calls = {
        "Forecast": stub.Forecast(request, metadata=metadata, timeout=TIMEOUT),
        "StreamForecast": stub.StreamForecast(iter([request]), metadata=metadata, timeout=TIMEOUT),
        "GetModelInfo": stub.GetModelInfo(
            pb.GetModelInfoRequest(), metadata=metadata, timeout=TIMEOUT
        ),
        "ServerReflectionInfo": reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
    }
    codes = await asyncio.gather(*(code(c) for c in calls.values()))
    return dict(zip(calls, codes, strict=True))


@pytest.mark.parametrize("metadata", BAD_METADATA.values(), ids=BAD_METADATA.keys())
async def test_token_missing_or_wrong_is_unauthenticated(token_server, windows, metadata):
    async with grpc.aio.insecure_channel(target_of(token_server)) as channel:
        codes = await all_rpcs_codes(channel, windows, metadata)

    assert codes == dict.fromkeys(codes, grpc.StatusCode.UNAUTHENTICATED)


async def test_token_refused_stream_that_never_half_closes_is_not_left_open(token_server, windows):
    """A refused client that keeps streaming is answered once the server stops waiting for its
    half-close (it waits only so that a client which does finish sending reads the server's
    status, not grpc.aio's INTERNAL, grpc/grpc#36066); the call never runs to its deadline."""
    request = request_from_windows(windows[:1])

    async def endless():
        while True:
            yield request
            await asyncio.sleep(0.05)

    async with grpc.aio.insecure_channel(target_of(token_server)) as channel:
        call = pb_grpc.ForecastServiceStub(channel).StreamForecast(endless(), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass

    assert caught.value.code() not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_token_unauthenticated_details_are_generic(token_server):
    async with grpc.aio.insecure_channel(target_of(token_server)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    assert caught.value.details() == "missing or invalid bearer token"
    assert TOKEN not in caught.value.details()


async def test_token_right_one_is_served(token_server, windows):
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(target_of(token_server)) as channel:
        codes = await all_rpcs_codes(channel, windows, metadata)

    assert codes == dict.fromkeys(codes, grpc.StatusCode.OK)


async def test_token_not_needed_for_health_check(token_server):
    async with grpc.aio.insecure_channel(target_of(token_server)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_token_validation_error_still_invalid_argument(token_server):
    """Authenticated bad input is still answered as bad input, not as an auth failure."""
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    async with grpc.aio.insecure_channel(target_of(token_server)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Forecast(pb.ForecastRequest(), metadata=metadata, timeout=TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -------------------------------------------------------------------------------------------
# The same options from the client CLI
# -------------------------------------------------------------------------------------------


async def test_client_cli_tls_with_ca(tls_server, pki, artifacts):
    result = await client_cli("--target", target_of(tls_server), "--ca", str(pki.ca_cert), "info")

    assert result.returncode == 0, result.stderr
    assert artifacts.version in result.stdout


async def test_client_cli_mtls_with_client_certificate(mtls_server, pki):
    result = await client_cli(
        "--target",
        target_of(mtls_server),
        "--ca",
        str(pki.ca_cert),
        "--cert",
        str(pki.client_cert),
        "--key",
        str(pki.client_key),
        "health",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


async def test_client_cli_token_from_env_twin(token_server, artifacts):
    target = target_of(token_server)

    without = await client_cli("--target", target, "info")
    with_env = await client_cli("--target", target, "info", env={"FORECAST_AUTH_TOKEN": TOKEN})

    assert without.returncode == 1
    assert without.stderr.startswith("python -m service.client: error: UNAUTHENTICATED: ")
    assert with_env.returncode == 0, with_env.stderr
    assert artifacts.version in with_env.stdout
