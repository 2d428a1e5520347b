"""Prediction intervals over gRPC: ``ForecastRequest.levels`` in, one ``Interval`` per level out
(Forecast and StreamForecast), every bad level refused by name while the server stays up, a
version without a calibration refused with FAILED_PRECONDITION, and ModelInfo's figures."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import grpc
import numpy as np
import pytest
from service_testkit import read_stream, start_server, target_of

from service.api import pb, pb_grpc
from service.client import forecasts_from_response, request_from_windows
from service.validation import MAX_LEVELS
from training.artifacts import load_artifacts
from training.intervals import Conformal

TIMEOUT = 20.0


def bounds_of(response: pb.ForecastResponse) -> tuple[list[float], np.ndarray, np.ndarray]:
    """(levels of the first prediction, lo and hi ``[n, levels, horizon]``)."""
    levels = [i.level for i in response.predictions[0].intervals]
    lo = np.array([[list(i.lo) for i in p.intervals] for p in response.predictions])
    hi = np.array([[list(i.hi) for i in p.intervals] for p in response.predictions])
    return levels, lo, hi


async def test_forecast_returns_one_interval_per_level_in_request_order(stub, windows, artifacts):
    levels = [95.0, 50.0, 80.0, 99.0]
    request = request_from_windows(windows[:6], levels=levels)

    response = await stub.Forecast(request, timeout=TIMEOUT)

    horizon = artifacts.horizon
    values = forecasts_from_response(response)
    assert all([i.level for i in p.intervals] == levels for p in response.predictions)
    got, lo, hi = bounds_of(response)
    assert lo.shape == hi.shape == (6, len(levels), horizon)
    assert np.all(lo <= values[:, None, :]) and np.all(values[:, None, :] <= hi)
    # Wider levels contain the narrower ones: 50 inside 80 inside 95 inside 99.
    for wide, narrow in ((0, 2), (2, 1), (3, 0)):
        assert np.all(lo[:, wide] <= lo[:, narrow]) and np.all(hi[:, narrow] <= hi[:, wide])
    assert np.all(hi[:, 1] - lo[:, 1] < hi[:, 0] - lo[:, 0])  # 50 % strictly narrower
    # The points are those of a request without levels.
    plain = await stub.Forecast(request_from_windows(windows[:6]), timeout=TIMEOUT)
    np.testing.assert_array_equal(values, forecasts_from_response(plain))
    assert all(len(p.intervals) == 0 for p in plain.predictions)


async def test_forecast_intervals_are_the_training_calibration(stub, windows, artifacts):
    """The server applies the manifest's calibration through training.intervals."""
    levels = [80.0, 95.0, 62.5]
    response = await stub.Forecast(
        request_from_windows(windows[:8], levels=levels), timeout=TIMEOUT
    )

    calibration = artifacts.manifest.intervals
    assert calibration is not None
    expected = Conformal(calibration, artifacts.transform()).bounds(
        forecasts_from_response(response), windows[:8], levels
    )
    _, lo, hi = bounds_of(response)
    np.testing.assert_allclose(lo, expected.lo, rtol=1e-6)
    np.testing.assert_allclose(hi, expected.hi, rtol=1e-6)


async def test_forecast_level_beyond_the_calibration_has_infinite_bounds(stub, windows, artifacts):
    """With n calibration windows a level above n / (n + 1) has no finite conformal bound."""
    calibration = artifacts.manifest.intervals
    assert calibration is not None
    n = calibration.windows
    beyond = float(np.float32(100 * (n + 0.5) / (n + 1)))

    response = await stub.Forecast(
        request_from_windows(windows[:2], levels=[80.0, beyond]), timeout=TIMEOUT
    )

    _, lo, hi = bounds_of(response)
    assert np.all(np.isfinite(lo[:, 0])) and np.all(np.isfinite(hi[:, 0]))
    assert np.all(lo[:, 1] == -math.inf) and np.all(hi[:, 1] == math.inf)


BAD_LEVELS = [
    pytest.param([0.0], "level 0 ", id="zero"),
    pytest.param([-1.0], "level -1 ", id="negative"),
    pytest.param([100.0], "level 100 ", id="hundred"),
    pytest.param([120.0], "level 120 ", id="above-hundred"),
    pytest.param([80.0, math.nan], "level NaN ", id="nan"),
    pytest.param([80.0, 95.0, 80.0], "level 80 is repeated", id="duplicate"),
    pytest.param(
        [float(v) for v in range(10, 10 + 9 * 5, 5)],
        f"request has 9 levels; the limit is {MAX_LEVELS}",
        id="nine-levels",
    ),
]


@pytest.mark.parametrize(("levels", "named"), BAD_LEVELS)
async def test_forecast_bad_level_is_invalid_argument_naming_it(stub, windows, levels, named):
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.Forecast(request_from_windows(windows[:2], levels=levels), timeout=TIMEOUT)

    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in excinfo.value.details()
    # The server stays up: the next request is answered.
    ok = await stub.Forecast(request_from_windows(windows[:1], levels=[80.0]), timeout=TIMEOUT)
    assert len(ok.predictions[0].intervals) == 1


async def test_forecast_accepts_eight_levels(stub, windows):
    levels = [float(v) for v in range(10, 90, 10)]
    assert len(levels) == MAX_LEVELS

    response = await stub.Forecast(
        request_from_windows(windows[:1], levels=levels), timeout=TIMEOUT
    )

    assert [i.level for i in response.predictions[0].intervals] == levels


async def test_stream_forecast_returns_intervals_per_message(stub, windows):
    requests = [
        request_from_windows(windows[i : i + 2], levels=[[80.0, 95.0], [], [50.0]][i % 3])
        for i in range(9)
    ]

    responses, error = await read_stream(stub.StreamForecast(iter(requests), timeout=TIMEOUT))

    assert error is None and len(responses) == len(requests)
    for request, response in zip(requests, responses, strict=True):
        unary = await stub.Forecast(request, timeout=TIMEOUT)
        assert response == unary
        assert all(
            [i.level for i in p.intervals] == list(request.levels) for p in response.predictions
        )


@pytest.mark.parametrize(("levels", "named"), BAD_LEVELS)
async def test_stream_forecast_bad_level_ends_the_stream_naming_message_and_level(
    stub, windows, levels, named
):
    requests = [
        request_from_windows(windows[:1], levels=[80.0]),
        request_from_windows(windows[1:2]),
        request_from_windows(windows[2:3], levels=levels),
        request_from_windows(windows[3:4], levels=[80.0]),
    ]

    responses, error = await read_stream(stub.StreamForecast(iter(requests), timeout=TIMEOUT))

    assert len(responses) == 2
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("message 2: ")
    assert named in error.details()
    again, error = await read_stream(stub.StreamForecast(iter(requests[:2]), timeout=TIMEOUT))
    assert error is None and len(again) == 2


async def test_model_info_carries_the_intervals_test_coverage_and_width(stub, artifacts):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    calibration = artifacts.manifest.intervals
    assert calibration is not None
    assert [(s.level, s.coverage, s.mean_width) for s in info.intervals] == [
        (s.level, s.coverage, s.mean_width) for s in calibration.test
    ]
    assert [s.level for s in info.intervals] == [80.0, 95.0]


# ---- a version trained without an interval calibration -------------------------------------


@pytest.fixture(scope="module")
def uncalibrated_server(aio, settings, trained_version, tmp_path_factory):
    """A server of the session's version with its manifest's ``intervals`` section removed, as
    versions published before intervals have none (the manifest is not checksummed)."""
    copy = shutil.copytree(trained_version, tmp_path_factory.mktemp("old") / trained_version.name)
    body = json.loads((copy / "manifest.json").read_text())
    del body["intervals"]
    (copy / "manifest.json").write_text(json.dumps(body))
    artifacts = load_artifacts(copy)
    assert artifacts.manifest.intervals is None
    running = aio.run(start_server(dataclasses.replace(settings, artifacts=copy), artifacts))
    yield running
    aio.run(running.shutdown(grace=1.0))


async def test_version_without_calibration_refuses_levels_naming_the_version(
    uncalibrated_server, windows, artifacts
):
    async with grpc.aio.insecure_channel(target_of(uncalibrated_server)) as channel:
        stub = pb_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await stub.Forecast(request_from_windows(windows[:2], levels=[80.0]), timeout=TIMEOUT)
        plain = await stub.Forecast(request_from_windows(windows[:2]), timeout=TIMEOUT)
        stream = stub.StreamForecast(
            iter(
                [
                    request_from_windows(windows[:1]),
                    request_from_windows(windows[:1], levels=[95.0]),
                ]
            ),
            timeout=TIMEOUT,
        )
        responses, error = await read_stream(stream)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)

    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"version {artifacts.version} " in excinfo.value.details()
    assert "without an interval calibration" in excinfo.value.details()
    assert len(plain.predictions) == 2  # points are still served
    assert len(responses) == 1 and error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("message 1: version ")
    assert list(info.intervals) == []
