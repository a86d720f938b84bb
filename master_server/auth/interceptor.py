"""The one gRPC server interceptor (sync server): authenticate, authorize, check, run, decorate.

Thin on purpose: the work is in :mod:`master_server.auth.core` (who is calling) and
:mod:`master_server.auth.policy` (may they). The wrapped handler sets the caller's principal in
the context variable of :mod:`master_server.auth.principal` in the thread that runs it, for the
duration of the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from determined_sdk.errors import DeterminedError, InvalidArgumentError
from master_server.auth import policy
from master_server.auth.core import Authenticator
from master_server.auth.principal import Principal, acting_as
from master_server.limits import check_request

logger = logging.getLogger(__name__)


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


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
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

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        store = self.auth.store

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
                with acting_as(p):
                    yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )

        # Client-streaming calls are not used by this API; refuse rather than pass unchecked.
        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: streaming requests refused")

        return grpc.unary_unary_rpc_method_handler(refuse)
