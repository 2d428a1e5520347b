"""Bearer-token authentication for every RPC except the health service; the admin service may
have a token of its own."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from service.errors import Context, Continuation, Handler

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_PREFIX = "/forecast.v1.ModelAdmin/"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>``; compares in constant time (hmac).

    ``token`` guards every RPC but health (None: open); ``admin_token`` guards the admin
    service instead (None: ``token`` does), so the admin service can need a token while the
    forecast RPCs are open."""

    def __init__(self, token: str | None, *, admin_token: str | None = None) -> None:
        if token == "" or admin_token == "":
            raise ValueError("empty auth token")
        if token is None and admin_token is None:
            raise ValueError("no token to require")
        self._expected = None if token is None else f"Bearer {token}".encode()
        admin = admin_token if admin_token is not None else token
        self._admin_expected = None if admin is None else f"Bearer {admin}".encode()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        expected = self._admin_expected if method.startswith(ADMIN_PREFIX) else self._expected
        if expected is None:
            return handler
        supplied = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                supplied = value if isinstance(value, str) else value.decode("latin-1")
                break
        if hmac.compare_digest(supplied.encode("utf-8", "replace"), expected):
            return handler
        return _denied(handler)


DENIED = "missing or invalid bearer token"
# A refused call whose client streams its requests is answered once the client has finished
# sending (or after this long, or this many messages, whichever comes first). grpc.aio clients
# report INTERNAL instead of the server's status when that status arrives while they are still
# writing (grpc/grpc#36066), so answering at once made a refused stream look like a server bug.
HALF_CLOSE_WAIT_S = 0.25
MAX_DISCARDED_MESSAGES = 8


async def _deny(request: Any, context: Context) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


async def _deny_stream(request: Any, context: Context) -> AsyncIterator[None]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
    yield  # pragma: no cover - makes this an async generator


async def _deny_after_sending(requests: AsyncIterator[Any], context: Context) -> None:
    await until_half_close(requests)
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


async def _deny_stream_after_sending(
    requests: AsyncIterator[Any], context: Context
) -> AsyncIterator[None]:
    await until_half_close(requests)
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
    yield  # pragma: no cover - makes this an async generator


async def until_half_close(requests: AsyncIterator[Any]) -> None:
    """Discard the client's messages (unparsed) until it half-closes, within the bounds."""
    try:
        async with asyncio.timeout(HALF_CLOSE_WAIT_S):
            discarded = 0
            async for _ in requests:
                discarded += 1
                if discarded >= MAX_DISCARDED_MESSAGES:
                    return
    except TimeoutError:
        pass


def _denied(handler: Handler) -> Handler:
    """A handler that refuses the call; a refused client's request bytes are never parsed."""
    kinds = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, _deny),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, _deny_stream),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, _deny_after_sending),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, _deny_stream_after_sending),
    }
    for attribute, (make, behavior) in kinds.items():
        if getattr(handler, attribute):
            return make(behavior, response_serializer=handler.response_serializer)
    return handler
