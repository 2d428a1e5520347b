"""Fixtures of the service tests: settings -> artifacts -> server -> channel -> stub.

``async def`` tests run on one session-wide event loop (an :class:`asyncio.Runner`), which the
in-process ``grpc.aio`` servers of the session fixtures also live on. The small
``pytest_pyfunc_call`` hook below is all the plugin this needs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_testkit import Pki, make_pki, start_server, synthetic_windows, target_of

from service.api import pb_grpc
from service.config import Settings
from service.server import RunningServer
from training.artifacts import Artifacts, load_artifacts

# An async test that takes longer than this has hung; fail it instead of the whole session.
ASYNC_TEST_TIMEOUT_S = 120.0


@pytest.fixture(scope="session", autouse=True)
def aio() -> Iterator[asyncio.Runner]:
    """The event loop every async test and every in-process server of the session runs on."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests to completion on the session loop."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    runner = pyfuncitem.funcargs["aio"]
    assert isinstance(runner, asyncio.Runner)
    arguments = {name: pyfuncitem.funcargs[name] for name in inspect.signature(test).parameters}
    runner.run(asyncio.wait_for(test(**arguments), ASYNC_TEST_TIMEOUT_S))
    return True


# -------------------------------------------------------------------------------------------
# settings -> artifacts -> server -> stub
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def settings(trained_version: Path) -> Settings:
    """Loopback, OS-chosen port, no metrics; three small buckets keep XLA warm-up short."""
    return Settings(
        artifacts=trained_version,
        address="127.0.0.1:0",
        metrics_port=-1,
        max_batch_size=16,
        batch_buckets=(1, 4, 16),
        max_windows_per_request=64,
        max_message_bytes=64 * 1024,
        grace_seconds=5.0,
    )


@pytest.fixture(scope="session")
def artifacts(trained_version: Path) -> Artifacts:
    return load_artifacts(trained_version)


@pytest.fixture(scope="session")
def server(
    aio: asyncio.Runner, settings: Settings, artifacts: Artifacts
) -> Iterator[RunningServer]:
    """The session's shared in-process server, warmed up (SERVING)."""
    running = aio.run(start_server(settings, artifacts))
    yield running
    aio.run(running.shutdown(grace=1.0))


@pytest.fixture(scope="session")
def channel(aio: asyncio.Runner, server: RunningServer) -> Iterator[grpc.aio.Channel]:
    async def open_channel() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(target_of(server))

    opened = aio.run(open_channel())
    yield opened
    aio.run(opened.close())


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.ForecastServiceStub:
    return pb_grpc.ForecastServiceStub(channel)


# -------------------------------------------------------------------------------------------
# Data and certificates
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def windows(artifacts: Artifacts) -> np.ndarray:
    """64 distinct, valid raw windows ``[64, window, features]`` from the built-in series."""
    assert artifacts.feature_names == ["load", "temperature", "hour_sin", "hour_cos", "weekend"]
    return synthetic_windows(artifacts.window, 64)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
