"""The Open Inference Protocol (v2) servicer, ``inference.GRPCInferenceService``: protobuf in,
:class:`service.core.ForecastCore` call, protobuf out, on the same server and port as
forecast.v1 (same batcher, model, monitoring, auth, drain and request metrics). No try/except
(see errors.py); conversion and validation in :mod:`service.protocols.oip_v2_convert`.

One model, named by ``--model-name``; its one version is the serving artifact version. A
request naming another model, or another version, is answered ``NOT_FOUND``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import grpc

from service.api import oip_grpc, oip_pb
from service.core import ForecastCore
from service.errors import ModelNotFound
from service.lifecycle import ServingModel
from service.protocols.oip_v2_convert import infer_request, infer_response, model_metadata

SERVER_NAME = "lstm-forecast-service"
Readiness = Callable[[], Awaitable[bool]]


def server_version() -> str:
    """The installed package's version (ServerMetadata)."""
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        core: ForecastCore,
        *,
        model_name: str,
        server_ready: Readiness,
        model_ready: Readiness,
    ) -> None:
        """``server_ready`` / ``model_ready``: what gRPC health reports for the server and for
        the forecast service (not ready while warming up or draining, and with
        ``--on-collapse unready`` while the output is collapsed)."""
        self._core = core
        self._model_name = model_name
        self._server_ready = server_ready
        self._model_ready = model_ready
        self._version = server_version()

    def _model(self, name: str, version: str) -> ServingModel:
        """The serving version, when ``name`` and ``version`` (empty: any) name it."""
        model = self._core.pin()
        if name != self._model_name:
            raise ModelNotFound(
                f"model '{name}' is not served here; the model is '{self._model_name}'"
            )
        if version and version != model.version:
            raise ModelNotFound(
                f"version '{version}' of model '{name}' is not served; the serving version "
                f"is '{model.version}'"
            )
        return model

    async def ServerLive(
        self, request: oip_pb.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip_pb.ServerLiveResponse:
        return oip_pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip_pb.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip_pb.ServerReadyResponse:
        return oip_pb.ServerReadyResponse(ready=await self._server_ready())

    async def ModelReady(
        self, request: oip_pb.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip_pb.ModelReadyResponse:
        self._model(request.name, request.version)
        return oip_pb.ModelReadyResponse(ready=await self._model_ready())

    async def ServerMetadata(
        self, request: oip_pb.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip_pb.ServerMetadataResponse:
        return oip_pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version)

    async def ModelMetadata(
        self, request: oip_pb.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip_pb.ModelMetadataResponse:
        model = self._model(request.name, request.version)
        return model_metadata(self._model_name, model.forecaster)

    async def ModelInfer(
        self, request: oip_pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> oip_pb.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        forecaster = model.forecaster
        parsed = infer_request(
            request,
            window=forecaster.window,
            n_features=forecaster.n_features,
            max_windows=self._core.max_windows_per_request,
        )
        self._core.check_levels(model, parsed.levels)
        answer = await self._core.run(
            model,
            parsed.windows,
            parsed.levels,
            parsed.series_ids,
            self._core.deadline(context.time_remaining()),
        )
        return infer_response(
            answer, model_name=self._model_name, request_id=request.id, outputs=parsed.outputs
        )
