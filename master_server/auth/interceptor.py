"""The one gRPC server interceptor: authenticate, authorize, check, run, decorate.

Thin on purpose: the work is in :mod:`master_server.auth.core` (who is calling) and
:mod:`master_server.auth.policy` (may they). The server is a ``grpc.aio`` server: a handler that
is a plain function runs on the thread pool, and its wrapper checks the caller there (the checks
read the database) and sets the principal in the context variable of
:mod:`master_server.auth.principal` in that thread for the duration of the call; a coroutine
handler (a long poll) gets its caller checked on the thread pool too, then runs on the event loop
with the principal set in its task's context.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from determined_sdk.errors import DeterminedError, InvalidArgumentError
from master_server.auth import policy
from master_server.auth.core import Authenticator
from master_server.auth.principal import Principal, acting_as, set_principal
from master_server.limits import check_request

logger = logging.getLogger(__name__)


class _Failed(Exception):
    """The access check itself failed (a bug): answered INTERNAL, never "allowed"."""


class _Undecodable:
    """Stands for request bytes that are not the method's message (answered INVALID_ARGUMENT)."""


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that does not fail (grpc would answer INTERNAL for the exception)."""
    if deserialize is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return _Undecodable()

    return tolerant


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call but login and health needs a valid token; see :mod:`master_server.auth`."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def _principal(
        self, method: str, metadata: Any, request: Any, context: grpc.ServicerContext
    ) -> Principal | None:
        try:
            p = self.auth.authenticate(method, metadata or ())
            if isinstance(request, _Undecodable):
                raise InvalidArgumentError(f"{method}: the request is not a valid message")
            policy.authorize(self.auth.store, method, p, request)
            check_request(request)
            return p
        except DeterminedError as e:
            context.abort(e.code, str(e))
        except Exception as e:  # a bug here must not read as "allowed"
            logger.exception("%s: authorization failed", method)
            context.abort(grpc.StatusCode.INTERNAL, f"authorization failed: {type(e).__name__}")
        raise AssertionError("unreachable")  # context.abort raises

    def _check(self, method: str, metadata: Any, request: Any) -> Principal | None:
        """:meth:`_principal` for coroutine handlers: raises instead of aborting."""
        try:
            p = self.auth.authenticate(method, metadata or ())
            if isinstance(request, _Undecodable):
                raise InvalidArgumentError(f"{method}: the request is not a valid message")
            policy.authorize(self.auth.store, method, p, request)
            check_request(request)
            return p
        except DeterminedError:
            raise
        except Exception as e:  # a bug here must not read as "allowed"
            logger.exception("%s: authorization failed", method)
            raise _Failed(f"authorization failed: {type(e).__name__}") from None

    async def _check_async(
        self, method: str, metadata: Any, request: Any, context: Any
    ) -> Principal | None:
        # A running trial's own calls (reports, long polls) are checked right here: its token
        # and the request's trial id need no database, and a trip through the busy thread pool
        # would cost each report a queue wait behind every SDK client's work.
        p = self.auth.authenticate_running_trial(metadata or ())
        if (
            p is not None
            and not isinstance(request, _Undecodable)
            and policy.authorize_trial_inline(method, p, request)
        ):
            try:
                check_request(request)
            except DeterminedError as e:
                await context.abort(e.code, str(e))
            return p
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._check, method, metadata, request)
        except DeterminedError as e:
            await context.abort(e.code, str(e))
        except _Failed as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        raise AssertionError("unreachable")  # context.abort raises

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        store = self.auth.store

        if handler.unary_unary is not None and inspect.iscoroutinefunction(handler.unary_unary):
            inner_async = handler.unary_unary

            async def unary_async(request: Any, context: Any) -> Any:
                p = await self._check_async(method, metadata, request, context)
                with acting_as(p):
                    response = await inner_async(request, context)
                    if policy.after_is_trivial(method, p, response):
                        return response
                    try:
                        await asyncio.get_running_loop().run_in_executor(
                            None,
                            contextvars.copy_context().run,
                            policy.after,
                            store,
                            method,
                            p,
                            request,
                            response,
                        )
                    except DeterminedError as e:
                        await context.abort(e.code, str(e))
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary_async,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_agen = handler.unary_stream

            async def stream_async(request: Any, context: Any) -> AsyncIterator[Any]:
                p = await self._check_async(method, metadata, request, context)
                # Each call runs in a task of its own: the principal needs no reset afterwards
                # (and an async generator may be closed from another context).
                set_principal(p)
                async for item in inner_agen(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream_async,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                p = self._principal(method, metadata, request, context)
                with acting_as(p):
                    response = inner(request, context)
                    try:
                        policy.after(store, method, p, request, response)
                    except DeterminedError as e:
                        context.abort(e.code, str(e))
                    return response

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                p = self._principal(method, metadata, request, context)
                # The server advances (and, when the caller goes away, closes) this generator
                # from whichever pool thread is free: each step runs in one context of the
                # call's own, so the principal needs no reset (a reset in another thread's
                # context raised, and was logged, on every cancelled download).
                ctx = contextvars.copy_context()
                ctx.run(set_principal, p)
                steps = ctx.run(inner_stream, request, context)
                try:
                    while True:
                        try:
                            item = ctx.run(next, steps)
                        except StopIteration:
                            return
                        yield item
                finally:
                    ctx.run(steps.close)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )

        # Client-streaming calls are not used by this API; refuse rather than pass unchecked.
        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: streaming requests refused")

        return grpc.unary_unary_rpc_method_handler(refuse)
