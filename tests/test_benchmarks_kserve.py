"""The bench's KServe peer (``benchmarks.kserve_peer``) in its own environment, against the
service: same version, same windows, same forecasts.

These tests need ``.venv-kserve`` (``make kserve-venv``; ``make test`` and ``make bench``
create it). Without it they skip, or fail under ``FORECAST_REQUIRE_SYSTEM_TOOLS=1`` (CI).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from benchmarks.servers import KSERVE_PYTHON, ServerProcess, server_env, systems
from benchmarks.workload import OIP_MODEL, held_out, infer_forecasts, infer_request, model_shape
from service.api import oip_grpc, oip_pb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def kserve_venv() -> None:
    if KSERVE_PYTHON.is_file():
        return
    if os.environ.get("FORECAST_REQUIRE_SYSTEM_TOOLS") == "1":  # CI: no skipping
        pytest.fail(f"no {KSERVE_PYTHON}; `make kserve-venv` creates it", pytrace=False)
    pytest.skip("no .venv-kserve; `make kserve-venv` creates it")


TINY_BATCHING = ("--batch-buckets", "1,4,16", "--max-batch-size", "16")


@pytest.fixture(scope="module")
def servers(trained_version: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The KServe peer and the service (monitoring on) on the session's tiny model, ready."""
    logs = tmp_path_factory.mktemp("kserve-logs")
    chosen = {
        s.name: s
        for s in systems(
            trained_version,
            naive_workers=1,
            service_flags=TINY_BATCHING,
            kserve_python=KSERVE_PYTHON,
        )
        if s.name in ("service", "kserve")
    }
    with contextlib.ExitStack() as stack:
        started = {
            name: stack.enter_context(
                ServerProcess(system, logs / f"{name}.log", env=server_env("cpu"), timeout=240)
            )
            for name, system in chosen.items()
        }
        yield {name: server.wait_ready() for name, server in started.items()}


def _infer(server: ServerProcess, request: oip_pb.ModelInferRequest) -> oip_pb.ModelInferResponse:
    with grpc.insecure_channel(server.target) as channel:
        response: oip_pb.ModelInferResponse = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=30
        )
        return response


@pytest.mark.parametrize("count", [1, 7, 256])
def test_kserve_peer_answers_equal_the_service(servers, trained_version: Path, count: int):
    windows = held_out(model_shape(trained_version)[2])[:count]
    request = infer_request(windows)
    peer = infer_forecasts(_infer(servers["kserve"], request))
    service = infer_forecasts(_infer(servers["service"], request))
    assert peer is not None and service is not None
    assert peer.shape == service.shape == (count, model_shape(trained_version)[1].horizon)
    # float32 on the wire; the service pads batches to its buckets, the peer does not.
    np.testing.assert_allclose(peer, service, rtol=1e-5, atol=1e-5 * np.abs(service).max())


def test_kserve_peer_reports_the_device_and_the_model_ready(servers):
    peer = servers["kserve"]
    assert peer.device == "CPU"
    with grpc.insecure_channel(peer.target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(oip_pb.ModelReadyRequest(name=OIP_MODEL), timeout=10).ready
        metadata = stub.ModelMetadata(oip_pb.ModelMetadataRequest(name=OIP_MODEL), timeout=10)
    assert [(t.name, t.datatype) for t in metadata.inputs] == [("windows", "FP32")]
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("forecast", "FP32")]


def test_kserve_peer_rejects_windows_of_the_wrong_shape(servers, trained_version: Path):
    windows = held_out(model_shape(trained_version)[2])[:2, 1:]  # one row short
    with pytest.raises(grpc.RpcError) as error:
        _infer(servers["kserve"], infer_request(windows))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "windows" in (error.value.details() or "")


def test_kserve_peer_imports_no_generated_protobuf_of_the_service():
    """kserve pins protobuf 6; the service's generated code needs 7 and must stay out."""
    probe = (
        "import sys, google.protobuf, benchmarks.kserve_peer.model\n"
        "ours = sorted(m for m in sys.modules if m == 'service.api' or m.startswith('service._'))\n"
        "print(google.protobuf.__version__.split('.')[0], ours)"
    )
    done = subprocess.run(
        [str(KSERVE_PYTHON), "-c", probe],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["6", "[]"]
