"""StreamForecast: one response per message, in order, with the same validation per message."""

from __future__ import annotations

import grpc
import numpy as np
from service_testkit import EXTREME, read_stream

from service.api import SERVICE_NAME
from service.client import forecasts_from_response, request_from_windows
from service.errors import UNDECODABLE_MESSAGE
from service.servicer import STREAM_IN_FLIGHT

TIMEOUT = 20.0


def stream_requests(windows: np.ndarray, count: int):
    """``count`` messages of 1-3 windows each; message i starts at window i, so all differ."""
    return [
        request_from_windows(windows[i % len(windows) : i % len(windows) + 1 + i % 3])
        for i in range(count)
    ]


async def test_stream_forecast_answers_in_request_order(stub, windows):
    """More messages than the stream keeps in flight, each different: answers match the unary
    answer to the same message, position by position."""
    requests = stream_requests(windows, STREAM_IN_FLIGHT * 2 + 5)

    responses, error = await read_stream(stub.StreamForecast(iter(requests), timeout=TIMEOUT))
    unary = [await stub.Forecast(r, timeout=TIMEOUT) for r in requests]

    assert error is None
    assert len(responses) == len(requests)
    for position, (streamed, expected) in enumerate(zip(responses, unary, strict=True)):
        np.testing.assert_allclose(
            forecasts_from_response(streamed),
            forecasts_from_response(expected),
            rtol=1e-6,
            err_msg=f"message {position}",
        )


async def test_stream_forecast_with_no_messages_ends_ok(stub):
    responses, error = await read_stream(stub.StreamForecast(iter([]), timeout=TIMEOUT))

    assert responses == []
    assert error is None


async def test_stream_forecast_bad_message_ends_stream_after_earlier_answers(stub, windows):
    requests = stream_requests(windows, 8)
    del requests[5].windows[0].values[-1]

    responses, error = await read_stream(stub.StreamForecast(iter(requests), timeout=TIMEOUT))

    assert len(responses) == 5
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("message 5: window 0: has ")


async def test_stream_forecast_empty_message_names_its_index(stub, windows):
    requests = stream_requests(windows, 4)
    requests[2].Clear()

    responses, error = await read_stream(stub.StreamForecast(iter(requests), timeout=TIMEOUT))

    assert len(responses) == 2
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "message 2: request has no windows"


async def test_stream_forecast_extreme_message_names_its_index(stub, windows):
    requests = stream_requests(windows, 6)
    requests[4] = request_from_windows(np.full_like(windows[:1], EXTREME))

    responses, error = await read_stream(stub.StreamForecast(iter(requests), timeout=TIMEOUT))

    assert len(responses) == 4
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "message 4: window 0: values are too extreme to forecast from"


async def test_stream_forecast_undecodable_message_ends_stream(channel, windows):
    call = channel.stream_stream(f"/{SERVICE_NAME}/StreamForecast")
    good = [r.SerializeToString() for r in stream_requests(windows, 3)]

    responses, error = await read_stream(call(iter([*good, b"\x0a\xff"]), timeout=TIMEOUT))

    assert len(responses) == 3
    assert error is not None
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == UNDECODABLE_MESSAGE


async def test_stream_forecast_still_served_after_a_failed_stream(stub, windows):
    bad = stream_requests(windows, 3)
    bad[0].Clear()
    await read_stream(stub.StreamForecast(iter(bad), timeout=TIMEOUT))

    responses, error = await read_stream(
        stub.StreamForecast(iter(stream_requests(windows, 3)), timeout=TIMEOUT)
    )

    assert error is None
    assert len(responses) == 3
