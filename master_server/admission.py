"""Admission control: the master refuses work it cannot start soon instead of queueing it forever.

Two kinds of calls reach the server. Ordinary handlers run on the thread pool; when more of them
wait for a thread than ``max_queued_calls``, a new one is answered RESOURCE_EXHAUSTED at once
with a ``retry-after-ms`` trailer, so a flood from a few callers cannot grow the master's memory
or make every other caller wait behind it. Long polls wait on the event loop and cost memory only;
beyond ``max_waiting_calls`` of them new ones are refused the same way. Health checks are always
admitted. A refused call did nothing on the master, so clients may retry it whatever it is.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

logger = logging.getLogger(__name__)

#: Trailing metadata key of a refusal: milliseconds the caller should wait before retrying.
RETRY_AFTER_KEY = "retry-after-ms"
_ALWAYS = ("/grpc.health.v1.Health/",)


class Admission(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls while the thread pool's queue or the number of long polls is full.

    Args:
        pool: the executor ordinary handlers run on.
        waiting: returns how many long polls wait now.
        max_queued_calls: ordinary calls that may wait for a thread.
        max_waiting_calls: long polls that may wait at once.
        retry_after_ms: the hint sent with a refusal.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        waiting: Callable[[], int],
        *,
        max_queued_calls: int = 4096,
        max_waiting_calls: int = 100_000,
        retry_after_ms: int = 500,
    ) -> None:
        self.pool = pool
        self._waiting = waiting
        self.max_queued_calls = max_queued_calls
        self.max_waiting_calls = max_waiting_calls
        self.retry_after_ms = retry_after_ms
        self.refused = 0

    def queued(self) -> int:
        """Ordinary calls waiting for a thread of the pool now."""
        # The executor keeps its backlog in a SimpleQueue; its size is the bound we enforce.
        return self.pool._work_queue.qsize()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_ALWAYS):
            return handler
        behavior = handler.unary_unary or handler.unary_stream
        waits = inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
        if waits:
            busy = self._waiting() >= self.max_waiting_calls
            what = f"{self.max_waiting_calls} calls are waiting"
        else:
            busy = self.queued() >= self.max_queued_calls
            what = f"{self.max_queued_calls} calls are queued"
        if not busy:
            return handler
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            logger.warning("refused %d calls so far (latest %s: %s)", self.refused, method, what)
        return _refusal(handler, f"the master is busy ({what}); retry", self.retry_after_ms)


def _refusal(handler: grpc.RpcMethodHandler, message: str, retry_ms: int) -> Any:
    trailer = ((RETRY_AFTER_KEY, str(retry_ms)),)

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message, trailer)

    async def refuse_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message, trailer)
        yield None  # pragma: no cover - abort raises

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
