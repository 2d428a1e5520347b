"""Domain exceptions, and the one place that maps them to gRPC status codes.

The core raises :class:`InvalidWindow` (or another :class:`InvalidRequest`), :class:`Overloaded`,
:class:`ModelNotReady` or :class:`IntervalsUnavailable`; servicer methods contain no try/except.
:class:`StatusInterceptor` turns those into ``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``,
``UNAVAILABLE`` and ``FAILED_PRECONDITION``; anything unexpected becomes
``INTERNAL`` with a generic message, and the details go to the log only. It also reports
``(method, code, seconds)`` for every finished RPC to the recorder it is handed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

log = logging.getLogger(__name__)


class ForecastError(Exception):
    """Base of the errors the core raises on purpose; the message is safe to show a client."""

    code = grpc.StatusCode.INTERNAL


class InvalidRequest(ForecastError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidWindow(InvalidRequest):
    pass


class Overloaded(ForecastError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelNotReady(ForecastError):
    code = grpc.StatusCode.UNAVAILABLE


class IntervalsUnavailable(ForecastError):
    """Interval levels were asked of a version trained without an interval calibration."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelNotFound(ForecastError):
    """An Open Inference Protocol request named a model or version this server does not serve."""

    code = grpc.StatusCode.NOT_FOUND


class VersionNotFound(ForecastError):
    """ModelAdmin was asked for a version that is not on disk."""

    code = grpc.StatusCode.NOT_FOUND


class VersionUnusable(ForecastError):
    """A version cannot be served (or ModelAdmin cannot switch: no base directory). ``kind``
    classifies it like :class:`training.manifest.ArtifactError`'s ``reason``."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


INTERNAL_MESSAGE = "internal error; the server logged the details"
UNDECODABLE_MESSAGE = "request bytes are not a valid protobuf message of the expected type"


class _Undecodable:
    """Stands in for a request whose bytes failed to parse, so the handler can reject it."""


UNDECODABLE = _Undecodable()


def _lenient(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """gRPC turns a deserializer exception into UNKNOWN with the exception text; parse here
    instead and let the wrapped handler answer INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure is the client's bad bytes
            return UNDECODABLE

    return parse


async def _checked(request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in request_iterator:
        if request is UNDECODABLE:
            raise InvalidRequest(UNDECODABLE_MESSAGE)
        yield request


Recorder = Callable[[str, grpc.StatusCode, float], None]
if TYPE_CHECKING:  # grpc's classes are generic in its stubs only
    # What a server interceptor receives and returns.
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


def _short_method(full: str) -> str:
    return full.rsplit("/", 1)[-1] or full


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions to status codes and records the outcome of every RPC."""

    def __init__(self, record: Recorder | None = None) -> None:
        self._record = record or (lambda method, code, seconds: None)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _short_method(handler_call_details.method)
        kwargs = {
            "request_deserializer": _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method), **kwargs
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, streaming_request=True), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, streaming_request=False), **kwargs
            )
        return handler

    def _wrap_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if request is UNDECODABLE:
                    raise InvalidRequest(UNDECODABLE_MESSAGE)
                return await behavior(request, context)
            except BaseException as exc:
                code, details = _classify(exc, context, method)
                if details is None:
                    raise
                await context.abort(code, details)
            finally:
                self._record(method, code, time.perf_counter() - started)

        return wrapper

    def _wrap_stream(
        self, behavior: Callable[..., Any], method: str, *, streaming_request: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(request_or_iterator: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if streaming_request:
                    request_or_iterator = _checked(request_or_iterator)
                elif request_or_iterator is UNDECODABLE:
                    raise InvalidRequest(UNDECODABLE_MESSAGE)
                result = behavior(request_or_iterator, context)
                if inspect.isawaitable(result):  # writes with context.write (e.g. health Watch)
                    await result
                else:
                    async for response in result:
                        yield response
            except BaseException as exc:
                code, details = _classify(exc, context, method)
                if details is None:
                    raise
                await context.abort(code, details)
            finally:
                self._record(method, code, time.perf_counter() - started)

        return wrapper


def _classify(
    exc: BaseException, context: Context, method: str
) -> tuple[grpc.StatusCode, str | None]:
    """(status code, client message); message None means re-raise unchanged."""
    if isinstance(exc, ForecastError):
        return exc.code, str(exc)
    if isinstance(exc, grpc.aio.AbortError):  # the handler already set its own status
        return context.code() or grpc.StatusCode.UNKNOWN, None
    if isinstance(exc, asyncio.CancelledError):
        code = (
            grpc.StatusCode.DEADLINE_EXCEEDED
            if context.time_remaining() is not None and context.time_remaining() <= 0
            else grpc.StatusCode.CANCELLED
        )
        return code, None
    log.error("unexpected error in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
