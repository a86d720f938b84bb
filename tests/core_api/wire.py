"""A gRPC client interceptor for core_api's channel: it records every call and injects faults.

Installed through ``core_api._channel._TEST_INTERCEPTORS`` (the ``wire`` fixture), it sits
between a context that ``core_api.init()`` builds and a real master. Faults are made on the
client side, with real calls:

* ``Fault(..., after=False)``: the call fails with ``code`` before it is sent (the master never
  sees it), like a connection that drops before the request is out.
* ``Fault(..., after=True)``: a lost reply. The call goes to the master (which does the work),
  then the client gets ``code`` instead of the response.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from tests.support import wait_for


@dataclass
class Fault:
    """Make the next ``count`` calls of ``method`` fail with ``code``."""

    method: str
    code: grpc.StatusCode
    count: int = 1
    after: bool = False


@dataclass
class Call:
    """One call as the client made it.

    ``sent`` and ``answered`` are ticks of one clock shared by every call of the :class:`Wire`,
    so ``a.answered < b.sent`` means the reply to ``a`` came before ``b`` was sent.
    """

    name: str
    request: Any
    sent: int
    answered: int | None = None
    code: grpc.StatusCode | None = None  # OK, an error code, or None while in flight
    response: Any = None
    injected: bool = False

    def answered_before(self, other: Call) -> bool:
        """Whether this call's reply came before ``other`` was sent."""
        return self.answered is not None and self.answered < other.sent


class InjectedError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A failed call made up by the interceptor: an ``RpcError`` that is also its own (done)
    ``Call`` and ``Future``, like the errors grpc itself hands back."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    # grpc.RpcContext
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    # grpc.Future
    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> InjectedError:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class Wire(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Records the unary calls of core_api's channel in order; injects :class:`Fault` s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = 0
        self._calls: list[Call] = []
        self._faults: list[Fault] = []

    # -- for tests ---------------------------------------------------------------------------
    def inject(
        self, method: str, code: grpc.StatusCode, *, count: int = 1, after: bool = False
    ) -> None:
        """Fail the next ``count`` calls of ``method`` (see the module docstring)."""
        with self._lock:
            self._faults.append(Fault(method, code, count, after))

    def calls(self, name: str | None = None) -> list[Call]:
        """Every call so far (of ``name`` only, if given), in the order they were sent."""
        with self._lock:
            return [c for c in self._calls if name is None or c.name == name]

    def requests(self, name: str) -> list[Any]:
        return [c.request for c in self.calls(name)]

    def names(self) -> list[str]:
        return [c.name for c in self.calls()]

    def first(self, name: str) -> Call:
        found = self.calls(name)
        assert found, f"no {name} call was made (calls: {self.names()})"
        return found[0]

    def wait_sent(self, name: str, n: int = 1, timeout: float = 30.0) -> list[Call]:
        """Wait (with a deadline) until ``n`` calls of ``name`` were sent."""

        def enough() -> list[Call]:
            found = self.calls(name)
            return found if len(found) >= n else []

        return wait_for(enough, timeout, f"{n} {name} call(s)")

    # -- the interceptor ---------------------------------------------------------------------
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode()
        name = str(method).rsplit("/", 1)[-1]
        with self._lock:
            call = Call(name, request, sent=self._tick())
            self._calls.append(call)
            fault = next((f for f in self._faults if f.method == name and f.count > 0), None)
            if fault is not None:
                fault.count -= 1
                call.injected = True
        if fault is not None and not fault.after:
            return self._answer(call, InjectedError(fault.code, f"injected {fault.code.name}"))
        outcome = continuation(client_call_details, request)
        if fault is not None:
            # A lost reply: the master has done the work by the time the client fails.
            with contextlib.suppress(grpc.RpcError):
                outcome.result()
            return self._answer(
                call, InjectedError(fault.code, f"injected {fault.code.name} (after the call)")
            )
        if outcome.done():
            self._done(call, outcome)
            return outcome
        # In flight (a .future() call): the answer is recorded when the caller reads it, so
        # "answered before the next call was sent" holds whenever the caller waited for it.
        outcome.add_done_callback(lambda f: self._done(call, f))
        return _Observed(outcome, lambda: self._done(call, outcome))

    def _answer(self, call: Call, err: InjectedError) -> InjectedError:
        self._done(call, err)
        return err

    def _done(self, call: Call, future: Any) -> None:
        code = future.code() if isinstance(future, grpc.Call) else None
        response = None
        if code == grpc.StatusCode.OK:
            with contextlib.suppress(grpc.RpcError):
                response = future.result()
        with self._lock:
            if call.answered is None:  # the first of the done callback and the caller's read
                call.answered = self._tick()
                call.code = code
                call.response = response


class _Observed(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A call in flight, passed through; ``on_read`` runs before ``result()`` returns/raises."""

    def __init__(self, inner: Any, on_read: Callable[[], None]) -> None:
        self._inner = inner
        self._on_read = on_read

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._inner.result(timeout)
        finally:
            if self._inner.done():
                self._on_read()

    def exception(self, timeout: float | None = None) -> Any:
        try:
            return self._inner.exception(timeout)
        finally:
            if self._inner.done():
                self._on_read()

    def code(self) -> Any:
        return self._inner.code()

    def details(self) -> Any:
        return self._inner.details()

    def initial_metadata(self) -> Any:
        return self._inner.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._inner.trailing_metadata()

    def is_active(self) -> Any:
        return self._inner.is_active()

    def time_remaining(self) -> Any:
        return self._inner.time_remaining()

    def cancel(self) -> Any:
        return self._inner.cancel()

    def add_callback(self, callback: Callable[[], None]) -> Any:
        return self._inner.add_callback(callback)

    def cancelled(self) -> Any:
        return self._inner.cancelled()

    def running(self) -> Any:
        return self._inner.running()

    def done(self) -> Any:
        return self._inner.done()

    def traceback(self, timeout: float | None = None) -> Any:
        return self._inner.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _f: fn(self))
