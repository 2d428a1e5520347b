"""No train/serve skew: the service answers what the training code's offline path predicts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from service_testkit import synthetic_windows

from service.client import forecasts_from_response, request_from_windows
from training.predict import predict_windows

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def parity_windows(artifacts) -> np.ndarray:
    """Windows spread over the whole built-in series (train, validation and test periods)."""
    return synthetic_windows(artifacts.window, 150)


@pytest.fixture(scope="module")
def offline_forecasts(artifacts, parity_windows) -> np.ndarray:
    forecasts, _ = predict_windows(artifacts.model, artifacts.transform(), parity_windows)
    return forecasts


def assert_float32_close(served: np.ndarray, offline: np.ndarray, artifacts) -> None:
    """Within float32 tolerance: relative to the forecast, and to the target's own scale."""
    _, target_scale = artifacts.transform().target_affine()
    np.testing.assert_allclose(served, offline, rtol=1e-4, atol=1e-4 * target_scale)


async def test_served_forecasts_match_offline_prediction(
    stub, artifacts, parity_windows, offline_forecasts, settings
):
    """Requests of up to the per-request limit, each split into bucket-padded model calls."""
    step = settings.max_windows_per_request
    responses = [
        await stub.Forecast(request_from_windows(parity_windows[lo : lo + step]), timeout=TIMEOUT)
        for lo in range(0, len(parity_windows), step)
    ]

    served = np.concatenate([forecasts_from_response(r) for r in responses])
    assert served.shape == offline_forecasts.shape
    assert_float32_close(served, offline_forecasts, artifacts)


async def test_concurrent_single_window_forecasts_match_offline_prediction(
    stub, artifacts, parity_windows, offline_forecasts
):
    """However the batcher groups and pads concurrent windows, each answer is its own."""
    responses = await asyncio.gather(
        *(
            stub.Forecast(request_from_windows(parity_windows[i : i + 1]), timeout=TIMEOUT)
            for i in range(len(parity_windows))
        )
    )

    served = np.concatenate([forecasts_from_response(r) for r in responses])
    assert_float32_close(served, offline_forecasts, artifacts)


async def test_streamed_forecasts_match_offline_prediction(
    stub, artifacts, parity_windows, offline_forecasts
):
    requests = [
        request_from_windows(parity_windows[lo : lo + 7]) for lo in range(0, len(parity_windows), 7)
    ]

    responses = [r async for r in stub.StreamForecast(iter(requests), timeout=TIMEOUT)]

    served = np.concatenate([forecasts_from_response(r) for r in responses])
    assert_float32_close(served, offline_forecasts, artifacts)


def test_offline_forecasts_are_not_trivial(offline_forecasts, parity_windows, artifacts):
    """Guards the parity tests against comparing two constant answers."""
    target = parity_windows[:, -1, artifacts.feature_names.index(artifacts.manifest.target)]
    assert np.std(offline_forecasts[:, 0]) > 0.1 * np.std(target)
