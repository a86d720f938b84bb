"""The one error tree of the platform, and its one table to and from gRPC status codes.

The master raises these classes from its service layer; its servicers turn them into a gRPC
status with :func:`to_grpc_status`, its REST API into an HTTP status with
:func:`to_http_status`. The SDK and the Core API turn a failed call back into the
same class with :func:`from_rpc_error`, so a user never sees a raw ``grpc.RpcError``.
"""

from __future__ import annotations

import grpc


class DeterminedError(Exception):
    """Base of every error the platform raises to a user."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    @property
    def status_code(self) -> int:
        """The HTTP status Determined's REST API would answer with (404 for not found, ...)."""
        return _HTTP_STATUS.get(self.code, 500)

    @property
    def message(self) -> str:
        """The error's text (Determined's exceptions have ``message``)."""
        return str(self)


class InvalidArgumentError(DeterminedError, ValueError):
    """A request carried a bad value; the message names the field or id at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(DeterminedError, LookupError):
    """The named experiment, trial, checkpoint, ... does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(DeterminedError):
    """A resource with that name or id already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(DeterminedError):
    """The resource is in a state that does not allow the call (the message names the state)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnauthenticatedError(DeterminedError):
    """Missing or bad credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(DeterminedError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class MasterUnavailableError(DeterminedError):
    """The master could not be reached (after retries, for reads)."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(DeterminedError):
    """The call did not finish in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(DeterminedError):
    """A size limit was passed (model directory, message size, queue)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InternalError(DeterminedError):
    """A bug on the master's side; the master keeps serving."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[DeterminedError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        UnauthenticatedError,
        PermissionDeniedError,
        MasterUnavailableError,
        DeadlineExceededError,
        ResourceExhaustedError,
        InternalError,
    )
}
# Codes with no class of their own map to the nearest one.
_BY_CODE[grpc.StatusCode.OUT_OF_RANGE] = InvalidArgumentError
_BY_CODE[grpc.StatusCode.ABORTED] = FailedPreconditionError


_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Determined's exception names (``determined.common.api.errors``) for code that catches them.
APIException = DeterminedError
BadRequestException = InvalidArgumentError
NotFoundException = NotFoundError
ForbiddenException = PermissionDeniedError
UnauthenticatedException = UnauthenticatedError
MasterNotFoundException = MasterUnavailableError


def to_grpc_status(err: DeterminedError) -> grpc.StatusCode:
    """The status code the master answers with for ``err``."""
    return err.code


def from_rpc_error(err: grpc.RpcError) -> DeterminedError:
    """Translate a failed call into the matching :class:`DeterminedError` subclass."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    cls = _BY_CODE.get(code, DeterminedError)
    out = cls(details or code.name)
    out.code = code
    return out


# The REST API answers with the HTTP status that gRPC's own HTTP mapping gives each code.
_HTTP_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


def to_http_status(err: DeterminedError) -> int:
    """The HTTP status the master's REST API answers with for ``err`` (500 for unknown codes)."""
    return _HTTP_BY_CODE.get(err.code, 500)
