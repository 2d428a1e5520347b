"""Property-based fuzzing of the full RPC path against a live in-process server.

Every generated request gets exactly the documented status (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED or UNAUTHENTICATED, or OK when it is valid), the server logs no unhandled
exception, and it still answers a valid request correctly afterwards.
"""

from __future__ import annotations

import dataclasses
import logging

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_testkit import start_server, target_of

from service.api import pb, pb_grpc
from service.client import forecasts_from_response, request_from_windows
from service.errors import INTERNAL_MESSAGE
from training.predict import predict_windows

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SPECIAL = [float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45, -1e-45, 1e-38, 0.0]


def expected_codes(request: pb.ForecastRequest, settings_, per_window: int) -> set:
    """The documented outcome of a request, from the request alone."""
    if request.ByteSize() > settings_.max_message_bytes:
        return {EXHAUSTED}
    windows = [np.asarray(w.values, dtype=np.float32) for w in request.windows]
    if not windows or len(windows) > settings_.max_windows_per_request:
        return {INVALID}
    if any(len(w) != per_window for w in windows):
        return {INVALID}
    if any(not np.isfinite(w).all() for w in windows):
        return {INVALID}
    if any(np.abs(w).max() > 1e30 for w in windows):
        return {OK, INVALID}  # "too extreme to forecast from" if the forecast overflows
    return {OK}


@st.composite
def forecast_requests(draw, pool: np.ndarray, max_windows: int):
    """Requests built from valid windows, then damaged: counts, lengths and special values."""
    n = draw(st.integers(min_value=0, max_value=max_windows + 8))
    flat = pool.reshape(len(pool), -1)
    windows = [
        flat[draw(st.integers(0, len(pool) - 1))].astype(np.float32).copy() for _ in range(n)
    ]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if not windows:
            break
        i = draw(st.integers(0, len(windows) - 1))
        kind = draw(st.sampled_from(["special", "length", "huge_length", "scale"]))
        if kind == "special":
            j = draw(st.integers(0, len(windows[i]) - 1)) if len(windows[i]) else 0
            if len(windows[i]):
                windows[i][j] = draw(st.sampled_from(SPECIAL))
        elif kind == "length":
            windows[i] = windows[i][: draw(st.integers(0, len(windows[i]) + 5))]
            if draw(st.booleans()):
                windows[i] = np.concatenate([windows[i], np.ones(3, np.float32)])
        elif kind == "huge_length":
            windows[i] = np.ones(draw(st.integers(10_000, 40_000)), np.float32)
        else:
            with np.errstate(over="ignore"):  # overflowing to inf is intended
                windows[i] = windows[i] * np.float32(draw(st.sampled_from([1e-30, 1e3, 1e30])))
    return pb.ForecastRequest(windows=[pb.Window(values=w.tolist()) for w in windows])


def _call(aio, coroutine_factory):
    async def run():
        try:
            return OK, await coroutine_factory()
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details()

    return aio.run(run())


@pytest.fixture(scope="module")
def fuzz_target(aio, server):
    async def open_channel():
        return grpc.aio.insecure_channel(target_of(server))

    channel = aio.run(open_channel())
    yield channel
    aio.run(channel.close())


@pytest.fixture
def no_unhandled_errors(caplog):
    caplog.set_level(logging.ERROR, logger="service")
    yield
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unexpected, [r.getMessage() for r in unexpected]


def _assert_still_correct(aio, channel, windows, artifacts) -> None:
    stub = pb_grpc.ForecastServiceStub(channel)
    code, response = _call(aio, lambda: stub.Forecast(request_from_windows(windows[:8])))
    assert code == OK
    expected, _ = predict_windows(artifacts.model, artifacts.transform(), windows[:8])
    np.testing.assert_allclose(forecasts_from_response(response), expected, rtol=1e-4)


def test_fuzzed_forecast_requests_get_documented_codes(
    aio, fuzz_target, settings, windows, artifacts, no_unhandled_errors
):
    stub = pb_grpc.ForecastServiceStub(fuzz_target)
    per_window = artifacts.window * len(artifacts.feature_names)
    seen = {}

    @FUZZ
    @given(request=forecast_requests(windows, settings.max_windows_per_request))
    def check(request):
        code, body = _call(aio, lambda: stub.Forecast(request, timeout=30))
        assert code in expected_codes(request, settings, per_window), (code, body)
        if code == OK:
            assert len(body.predictions) == len(request.windows)
            assert all(np.isfinite(p.values).all() for p in body.predictions)
        else:
            assert body != INTERNAL_MESSAGE and "Traceback" not in body and "/" not in body
        seen[code] = seen.get(code, 0) + 1

    check()
    assert {OK, INVALID, EXHAUSTED} <= set(seen), seen  # the generator reached every outcome
    _assert_still_correct(aio, fuzz_target, windows, artifacts)


def test_fuzzed_bytes_get_invalid_argument_or_their_parsed_outcome(
    aio, fuzz_target, settings, windows, artifacts, no_unhandled_errors
):
    raw = fuzz_target.unary_unary(
        "/forecast.v1.ForecastService/Forecast",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    per_window = artifacts.window * len(artifacts.feature_names)

    @FUZZ
    @given(data=st.binary(max_size=4096))
    def check(data):
        try:
            parsed = pb.ForecastRequest.FromString(data)
            expected = expected_codes(parsed, settings, per_window)
        except DecodeError:
            expected = {INVALID}
        code, body = _call(aio, lambda: raw(data, timeout=30))
        assert code in expected, (code, body)

    check()
    _assert_still_correct(aio, fuzz_target, windows, artifacts)


def test_fuzzed_streams_answer_in_order_or_stop_at_the_bad_message(
    aio, fuzz_target, settings, windows, artifacts, no_unhandled_errors
):
    stub = pb_grpc.ForecastServiceStub(fuzz_target)
    per_window = artifacts.window * len(artifacts.feature_names)

    @settings_small
    @given(requests=st.lists(forecast_requests(windows, 4), min_size=1, max_size=6))
    def check(requests):
        async def run():
            # Lockstep (write, then read its answer): a client still writing after the server
            # ended the stream sees a client-side INTERNAL from grpc.aio, which would hide the
            # server's real status. Pipelined streams are covered in test_service_streaming.
            received = []
            call = stub.StreamForecast(timeout=30)
            try:
                for request in requests:
                    await call.write(request)
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    received.append(response)
                await call.done_writing()
            except grpc.aio.AioRpcError:
                pass
            return await call.code(), received

        code, received = aio.run(run())
        outcomes = [expected_codes(r, settings, per_window) for r in requests]
        first_bad = next((i for i, o in enumerate(outcomes) if OK not in o), None)
        if first_bad is None and all(o == {OK} for o in outcomes):
            assert code == OK and len(received) == len(requests)
        else:
            assert code in {OK, INVALID, EXHAUSTED}
            if first_bad is not None:
                assert code != OK and len(received) <= first_bad
        for request, response in zip(requests, received, strict=False):
            assert len(response.predictions) == len(request.windows)

    check()
    _assert_still_correct(aio, fuzz_target, windows, artifacts)


settings_small = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def token_target(aio, settings, artifacts):
    token = "s3cret-token"
    running = aio.run(start_server(dataclasses.replace(settings, auth_token=token), artifacts))

    async def open_channel():
        return grpc.aio.insecure_channel(target_of(running))

    channel = aio.run(open_channel())
    yield channel, token
    aio.run(channel.close())
    aio.run(running.shutdown(1.0))


def test_fuzzed_tokens_are_unauthenticated_unless_exact(
    aio, token_target, windows, no_unhandled_errors
):
    channel, token = token_target
    stub = pb_grpc.ForecastServiceStub(channel)
    request = request_from_windows(windows[:1])

    @settings_small
    @given(
        value=st.one_of(
            st.none(),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            st.just(f"Bearer {token}x"),
            st.just(f"bearer {token}"),
            st.just(token),
            st.just(f"Bearer {token[:-1]}"),
        )
    )
    def check(value):
        metadata = () if value is None else (("authorization", value),)
        code, _ = _call(aio, lambda: stub.Forecast(request, metadata=metadata, timeout=30))
        assert code == (OK if value == f"Bearer {token}" else UNAUTHENTICATED)

    check()
    code, _ = _call(
        aio, lambda: stub.Forecast(request, metadata=(("authorization", f"Bearer {token}"),))
    )
    assert code == OK
