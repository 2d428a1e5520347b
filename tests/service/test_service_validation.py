"""Bad input: each case fails only its own request, with its status code and a precise message."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api import SERVICE_NAME, pb
from service.client import forecasts_from_response, request_from_windows
from service.convert import windows_from_request
from service.errors import (
    INTERNAL_MESSAGE,
    UNDECODABLE_MESSAGE,
    InvalidWindow,
    ModelNotReady,
    Overloaded,
    StatusInterceptor,
)

TIMEOUT = 10.0


async def rpc_error(call) -> grpc.aio.AioRpcError:
    """The error an awaited call ends with (fails the test if the call succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def with_values(windows: np.ndarray, index: int, value: float) -> pb.ForecastRequest:
    """A request of ``windows`` whose window ``index`` has one cell set to ``value``."""
    changed = windows.copy()
    changed[index, 3, 1] = value
    return request_from_windows(changed)


async def test_forecast_rejects_wrong_value_count_naming_the_window(stub, windows, artifacts):
    request = request_from_windows(windows[:3])
    del request.windows[2].values[-5:]

    error = await rpc_error(stub.Forecast(request, timeout=TIMEOUT))

    expected = artifacts.window * len(artifacts.feature_names)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"window 2: has {expected - 5} values, expected {expected} "
        f"({artifacts.window} timesteps x {len(artifacts.feature_names)} features)"
    )


async def test_forecast_rejects_window_without_values(stub, windows):
    request = request_from_windows(windows[:2])
    request.windows.add()

    error = await rpc_error(stub.Forecast(request, timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("window 2: has 0 values, expected ")


async def test_forecast_rejects_nan_values(stub, windows):
    error = await rpc_error(stub.Forecast(with_values(windows[:4], 1, math.nan), timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "window 1: contains NaN; impute missing values first"


@pytest.mark.parametrize("value", [math.inf, -math.inf])
async def test_forecast_rejects_inf_values(stub, windows, value):
    error = await rpc_error(stub.Forecast(with_values(windows[:4], 3, value), timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "window 3: contains Inf; impute missing values first"


async def test_forecast_rejects_empty_request(stub):
    error = await rpc_error(stub.Forecast(pb.ForecastRequest(), timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request has no windows"


async def test_forecast_rejects_more_windows_than_the_limit(stub, windows, settings):
    limit = settings.max_windows_per_request
    request = request_from_windows(np.concatenate([windows, windows[:1]]))
    assert len(request.windows) == limit + 1

    error = await rpc_error(stub.Forecast(request, timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"request has {limit + 1} windows; the limit is {limit}"


async def test_forecast_accepts_exactly_the_window_limit(stub, windows, settings):
    request = request_from_windows(windows[: settings.max_windows_per_request])

    response = await stub.Forecast(request, timeout=TIMEOUT)

    assert len(response.predictions) == settings.max_windows_per_request


async def test_forecast_rejects_message_over_the_size_limit(stub, windows, settings):
    """gRPC core refuses the oversized message before any handler runs."""
    repeats = settings.max_message_bytes // request_from_windows(windows).ByteSize() + 1
    request = request_from_windows(np.concatenate([windows] * repeats))
    assert request.ByteSize() > settings.max_message_bytes

    error = await rpc_error(stub.Forecast(request, timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()


@pytest.mark.parametrize("method", ["Forecast", "GetModelInfo"])
async def test_unary_rejects_bytes_that_are_not_protobuf(channel, method):
    call = channel.unary_unary(f"/{SERVICE_NAME}/{method}")

    error = await rpc_error(call(b"\x0a\xff\xff\xff", timeout=TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == UNDECODABLE_MESSAGE


async def test_forecast_still_served_after_bad_requests(stub, channel, windows, settings):
    undecodable = channel.unary_unary(f"/{SERVICE_NAME}/Forecast")
    oversized = request_from_windows(np.concatenate([windows] * 4))
    assert oversized.ByteSize() > settings.max_message_bytes
    for bad in (
        undecodable(b"\xff", timeout=TIMEOUT),
        stub.Forecast(oversized, timeout=TIMEOUT),
        stub.Forecast(pb.ForecastRequest(), timeout=TIMEOUT),
        stub.Forecast(with_values(windows[:2], 0, math.nan), timeout=TIMEOUT),
    ):
        await rpc_error(bad)

    response = await stub.Forecast(request_from_windows(windows[:2]), timeout=TIMEOUT)

    assert len(response.predictions) == 2


async def test_bad_request_does_not_fail_concurrent_good_ones(stub, windows):
    good = [
        stub.Forecast(request_from_windows(windows[i : i + 1]), timeout=TIMEOUT) for i in range(12)
    ]
    bad = [
        stub.Forecast(with_values(windows[:2], 1, math.nan), timeout=TIMEOUT),
        stub.Forecast(pb.ForecastRequest(), timeout=TIMEOUT),
    ]

    results = await asyncio.gather(*good, *bad, return_exceptions=True)

    assert all(isinstance(r, pb.ForecastResponse) for r in results[:12]), results[:12]
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT
        for r in results[12:]
    )
    np.testing.assert_allclose(
        np.concatenate([forecasts_from_response(r) for r in results[:12]]),
        forecasts_from_response(
            await stub.Forecast(request_from_windows(windows[:12]), timeout=TIMEOUT)
        ),
        rtol=1e-6,
    )


# -------------------------------------------------------------------------------------------
# The validation function itself, property-based
# -------------------------------------------------------------------------------------------

WINDOW, FEATURES = 3, 2
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _request(rows: list[list[float]]) -> pb.ForecastRequest:
    return pb.ForecastRequest(windows=[pb.Window(values=r) for r in rows])


@given(st.lists(st.lists(finite, min_size=6, max_size=6), min_size=1, max_size=5))
def test_windows_from_request_round_trips_finite_values(rows):
    out = windows_from_request(_request(rows), window=WINDOW, n_features=FEATURES, max_windows=5)

    assert out.shape == (len(rows), WINDOW, FEATURES)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.reshape(len(rows), -1), np.float32(rows))


@given(
    st.lists(st.lists(finite, min_size=6, max_size=6), min_size=1, max_size=5),
    st.data(),
)
def test_windows_from_request_names_the_first_window_with_a_wrong_count(rows, data):
    bad = data.draw(st.integers(0, len(rows) - 1), label="bad window")
    length = data.draw(st.integers(0, 12).filter(lambda n: n != 6), label="values")
    rows[bad] = [1.0] * length

    with pytest.raises(InvalidWindow, match=rf"^window {bad}: has {length} values, expected 6"):
        windows_from_request(_request(rows), window=WINDOW, n_features=FEATURES, max_windows=5)


@given(
    st.lists(st.lists(finite, min_size=6, max_size=6), min_size=1, max_size=5),
    st.data(),
)
def test_windows_from_request_names_the_first_non_finite_window(rows, data):
    bad = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=1, unique=True), label="bad")
    value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label="value")
    for index in bad:
        rows[index][data.draw(st.integers(0, 5), label="cell")] = value
    kind = "NaN" if math.isnan(value) else "Inf"

    with pytest.raises(InvalidWindow, match=rf"^window {min(bad)}: contains {kind};"):
        windows_from_request(_request(rows), window=WINDOW, n_features=FEATURES, max_windows=5)


# -------------------------------------------------------------------------------------------
# The one place that maps exceptions to status codes, on a real server
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exception", "code", "details"),
    [
        (InvalidWindow("window 7: broken"), grpc.StatusCode.INVALID_ARGUMENT, "window 7: broken"),
        (Overloaded("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
        (ModelNotReady("not yet"), grpc.StatusCode.UNAVAILABLE, "not yet"),
        (RuntimeError("secret /path/to/model"), grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
    ],
)
async def test_status_interceptor_maps_exceptions_to_codes(exception, code, details, caplog):
    recorded = []

    async def fail(request: bytes, context) -> bytes:
        raise exception

    server = grpc.aio.server(
        interceptors=[StatusInterceptor(lambda *outcome: recorded.append(outcome))]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "probe.Probe", {"Fail": grpc.unary_unary_rpc_method_handler(fail)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            error = await rpc_error(channel.unary_unary("/probe.Probe/Fail")(b"", timeout=TIMEOUT))
    finally:
        await server.stop(None)

    assert error.code() == code
    assert error.details() == details
    assert "Traceback" not in (error.debug_error_string() or "")
    assert [(method, status) for method, status, _ in recorded] == [("Fail", code)]
    if code == grpc.StatusCode.INTERNAL:  # the details go to the log, never to the client
        assert "secret /path/to/model" in caplog.text
