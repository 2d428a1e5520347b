"""The ``forecast.v1.ModelAdmin`` servicer: protobuf in, :mod:`service.lifecycle` call,
protobuf out. No try/except (see errors.py); bearer-token rules in auth.py."""

from __future__ import annotations

from typing import Any

import grpc

from service.api import pb, pb_grpc
from service.lifecycle import ModelLifecycle


class ModelAdminServicer(pb_grpc.ModelAdminServicer):
    def __init__(self, lifecycle: ModelLifecycle) -> None:
        self._lifecycle = lifecycle

    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListVersionsResponse:
        records = await self._lifecycle.list_versions()
        base = self._lifecycle.settings.base
        return pb.ListVersionsResponse(
            versions=[record.message() for record in records],
            serving_version=self._lifecycle.serving.version,
            artifacts="" if base is None else str(base),
        )

    async def SetServingVersion(
        self, request: pb.SetServingVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetServingVersionResponse:
        new, previous = await self._lifecycle.set_serving_version(request.version)
        return pb.SetServingVersionResponse(model_version=new, previous_version=previous)
