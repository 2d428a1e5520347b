"""Draining on SIGTERM: every call ends OK or UNAVAILABLE, none is cancelled.

``server.stop(grace)`` loses calls under load: gRPC core answers ``CANCELLED`` to every call that
has reached the server but that the asyncio server has not picked up yet (it asks core for one
call at a time, so under load most calls wait there), to every call that arrives after
``stop()`` began and before its client has read the GOAWAY, and to every call still running
when the grace period ends. With 64 clients calling back to back with one window each, 28 to 57
calls per SIGTERM ended ``CANCELLED`` in six runs, most of them in flight at the signal: of the
64 calls then in flight, the server had picked up 0 to 15.

So the server drains before it goes:

1. :meth:`Drain.begin`: every call that starts from then on is refused at once with
   :class:`Draining` (``UNAVAILABLE``, "server is draining; retry on another replica"). The
   listener stays open, so the calls waiting in core are picked up and refused.
2. :meth:`Drain.settle`: the calls that started before the signal run to their end, within the
   grace period less :func:`margin_seconds`. A call still running then (a stream its client
   keeps open) ends ``UNAVAILABLE`` too.
3. ``python -m service`` then exits without stopping the server (:func:`exit_process`): the
   OS closes the connections, and a call still on one ends ``UNAVAILABLE`` ("Stream removed
   (Socket closed)"). Stopping it instead still ended 55 calls ``CANCELLED`` after step 1,
   clients calling on as ``stop()`` began; holding the last refusals until the clients fell
   silent brought that to 0, except in 3 of about 30 runs on a loaded machine (4, 5, 24).
   In process, :meth:`service.server.RunningServer.shutdown` has no process to end: it calls
   ``server.stop()``, and a call that races it can still end ``CANCELLED``.

:class:`DrainInterceptor` counts the calls and refuses them; :class:`Draining` is a
:class:`~service.errors.ModelNotReady`, so :class:`~service.errors.StatusInterceptor` maps it
to ``UNAVAILABLE`` like every other domain error. Health checks are neither counted nor refused:
they keep reporting NOT_SERVING, and an open ``Watch`` does not hold the drain. Nor are the Open
Inference Protocol's ServerLive, ServerReady and ModelReady, which keep reporting not ready.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from service.api import OIP_PROBES
from service.auth import until_half_close
from service.errors import ModelNotReady

if TYPE_CHECKING:
    from service.errors import Context, Continuation, Handler

log = logging.getLogger(__name__)

DRAINING_MESSAGE = "server is draining; retry on another replica"
GRACE_OVER_MESSAGE = "server is draining and its grace period is over; retry on another replica"
# Methods the drain neither counts nor refuses: health, and the Open Inference Protocol's
# liveness and readiness checks (which then report not ready).
UNDRAINED_PREFIXES = ("/grpc.health.v1.Health/", *OIP_PROBES)
# The end of the grace period kept for what follows the calls (ending the ones still running,
# closing the batcher, stopping or exiting): at most MARGIN_SECONDS, at most MARGIN_FRACTION.
MARGIN_SECONDS = 1.0
MARGIN_FRACTION = 0.2


class Draining(ModelNotReady):
    """The call started after the drain began, or was still running at its end."""


@dataclass(eq=False)
class TrackedCall:
    """A call in flight: its task, and where that task waits."""

    task: asyncio.Task[Any]
    sending: bool = False  # waiting in gRPC's code to send a streamed response
    ended_by_drain: bool = False


class Drain:
    """The calls in flight, and whether the server drains."""

    def __init__(self) -> None:
        self.draining = False
        self._calls: set[TrackedCall] = set()
        self._idle = asyncio.Event()  # set once draining with no call in flight

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def begin(self) -> None:
        """Refuse every call from now on; :meth:`settle` waits for the ones in flight."""
        self.draining = True
        if not self._calls:
            self._idle.set()

    async def settle(self, timeout: float, end_within: float) -> int:
        """Wait up to ``timeout`` seconds for the calls in flight to end, then end the rest
        with :class:`Draining` and give them ``end_within`` seconds to do so. Returns how many
        calls had to be ended."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return 0
        except TimeoutError:
            pass
        remaining = list(self._calls)
        for call in remaining:
            call.ended_by_drain = True
            if not call.sending:  # otherwise it ends as soon as the response is sent
                call.task.cancel()
        try:
            async with asyncio.timeout(end_within):
                await self._idle.wait()
        except TimeoutError:
            log.warning("%d calls did not end when the grace period did", len(self._calls))
        return len(remaining)

    @contextmanager
    def tracked(self) -> Iterator[TrackedCall]:
        """Count the call running in the current task while in the block. If :meth:`settle`
        cancels it, it ends with :class:`Draining` instead (its task carries on to send that)."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - gRPC runs every call in a task
            raise RuntimeError("a call outside a task")
        call = TrackedCall(task)
        self._calls.add(call)
        try:
            yield call
        except asyncio.CancelledError:
            if not call.ended_by_drain:
                raise
            task.uncancel()
            raise Draining(GRACE_OVER_MESSAGE) from None
        finally:
            self._calls.discard(call)
            if self.draining and not self._calls:
                self._idle.set()


def margin_seconds(grace: float) -> float:
    """The part of the grace period kept for what follows the calls in flight."""
    return min(MARGIN_SECONDS, grace * MARGIN_FRACTION)


async def finish_calls(drain: Drain, grace: float) -> None:
    """Refuse new calls, and let the ones in flight end within ``grace`` less the margin."""
    started = time.monotonic()
    drain.begin()
    log.info("draining: %d calls in flight; new calls get UNAVAILABLE", drain.in_flight)
    margin = margin_seconds(grace)
    ended = await drain.settle(grace - margin, margin / 2)
    log.info(
        "calls in flight done after %.2fs (%d ended UNAVAILABLE at the end of the grace period)",
        time.monotonic() - started,
        ended,
    )


def exit_process() -> NoReturn:
    """End the process now, exit code 0, with the gRPC server still listening.

    Neither ``server.stop()`` nor the interpreter's shutdown (which stops it too) runs: gRPC
    core would answer ``CANCELLED`` to the calls that reach the server meanwhile. The OS closes
    the connections instead, and their clients see ``UNAVAILABLE``."""
    logging.shutdown()
    os._exit(0)


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Counts the calls in flight for ``drain``, and refuses new ones once it drains. Goes
    after :class:`~service.errors.StatusInterceptor`, which turns its refusals into statuses."""

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNDRAINED_PREFIXES):
            return handler
        # (handler attribute, handler factory, wrapper, whether the client streams requests)
        kinds: tuple[tuple[str, Callable[..., Handler], Callable[..., Any], bool], ...] = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, self._unary_response, False),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, self._unary_response, True),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, self._stream_response, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, self._stream_response, True),
        )
        for attribute, make, wrap, streaming_request in kinds:
            behavior = getattr(handler, attribute)
            if behavior:
                return make(
                    wrap(behavior, streaming_request=streaming_request),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    @staticmethod
    async def _refuse(request: Any, *, streaming_request: bool) -> NoReturn:
        """Raise :class:`Draining`; a client still sending its requests is answered once it
        has finished (see :func:`~service.auth.until_half_close`)."""
        if streaming_request:
            await until_half_close(request)
        raise Draining(DRAINING_MESSAGE)

    def _unary_response(
        self, behavior: Callable[..., Any], *, streaming_request: bool
    ) -> Callable[..., Any]:
        drain = self._drain

        async def wrapper(request: Any, context: Context) -> Any:
            if drain.draining:
                await self._refuse(request, streaming_request=streaming_request)
            with drain.tracked():
                return await behavior(request, context)

        return wrapper

    def _stream_response(
        self, behavior: Callable[..., Any], *, streaming_request: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        drain = self._drain

        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            if drain.draining:
                await self._refuse(request, streaming_request=streaming_request)
            with drain.tracked() as call:
                responses = behavior(request, context)
                if inspect.isawaitable(responses):  # writes with context.write itself
                    await responses
                    return
                try:
                    async for response in responses:
                        call.sending = True
                        yield response
                        call.sending = False
                        if call.ended_by_drain:
                            raise Draining(GRACE_OVER_MESSAGE)
                finally:
                    if inspect.isasyncgen(responses):
                        await responses.aclose()

        return wrapper
