"""Bearer-token authentication for every RPC except the health service."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires ``authorization: Bearer <token>``; compares in constant time (hmac)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty auth token")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        supplied = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                supplied = value if isinstance(value, str) else value.decode("latin-1")
                break
        if hmac.compare_digest(supplied.encode("utf-8", "replace"), self._expected):
            return handler
        return _denied(handler)


async def _deny(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


async def _deny_stream(
    request_or_iterator: Any, context: grpc.aio.ServicerContext
) -> AsyncIterator[None]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
    yield  # pragma: no cover - makes this an async generator


def _denied(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    kinds = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, _deny),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, _deny_stream),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, _deny),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, _deny_stream),
    }
    for attribute, (make, behavior) in kinds.items():
        if getattr(handler, attribute):
            return make(
                behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
