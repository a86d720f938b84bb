"""The trial's one gRPC channel to the master, its stubs, and the retry/error policy.

Every call into the master goes through :meth:`MasterSession.call`, which turns a failed call
into the platform's :class:`~determined_sdk.errors.DeterminedError` tree (never a raw
``grpc.RpcError``) and, for calls marked idempotent, retries on ``UNAVAILABLE`` and
``DEADLINE_EXCEEDED`` with exponential backoff (tenacity).

Master outages of any length are survived by default: idempotent calls keep retrying until the
master is back (a restarted or upgraded master adopts the trial). ``DET_MASTER_OUTAGE_LIMIT_S``
(or ``retry_seconds``) bounds that. An outage is logged once, as one warning line, and its end
once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import tenacity

from determined_sdk import _auth, errors
from determined_sdk._transport import BearerToken, make_channel, parse_master
from determined_sdk.proto import (
    checkpoint_pb2_grpc,
    experiment_pb2_grpc,
    logs_pb2_grpc,
    master_pb2,
    master_pb2_grpc,
    searcher_pb2_grpc,
    trial_pb2_grpc,
)

logger = logging.getLogger(__name__)

_Resp = TypeVar("_Resp")

#: Codes worth another try: the master is restarting, the network hiccuped, or the master is
#: busy and refused the call before doing anything (RESOURCE_EXHAUSTED).
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

#: How long idempotent calls keep retrying before the error reaches the user (seconds); None
#: means as long as the outage lasts. ``DET_MASTER_OUTAGE_LIMIT_S`` overrides it.
DEFAULT_RETRY_SECONDS: float | None = None

OUTAGE_LIMIT_ENV = "DET_MASTER_OUTAGE_LIMIT_S"

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Private test hook: gRPC client interceptors (``grpc.UnaryUnaryClientInterceptor``) wrapped,
#: in order, around the channel of every :class:`MasterSession` created while it is non-empty.
#: Tests set it with ``monkeypatch.setattr(_channel, "_TEST_INTERCEPTORS", [...])`` to record
#: the calls of a context that ``core_api.init()`` builds, or to inject faults (lost replies,
#: UNAVAILABLE) between it and a real master. Production code never sets it.
_TEST_INTERCEPTORS: list[grpc.UnaryUnaryClientInterceptor] = []


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` (a raw or translated error) is worth retrying."""
    if isinstance(exc, errors.DeterminedError):
        return exc.code in RETRYABLE_CODES
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return exc.code() in RETRYABLE_CODES
    return False


def retrying(
    seconds: float | None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity policy: retry retryable errors for ``seconds`` (None: without a limit),
    backing off up to 5 s."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable),
        stop=tenacity.stop_never if seconds is None else tenacity.stop_after_delay(seconds),
        wait=tenacity.wait_exponential(multiplier=0.05, max=5.0),
        reraise=True,
        before_sleep=before_sleep,
    )


def _outage_limit() -> float | None:
    raw = os.environ.get(OUTAGE_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{OUTAGE_LIMIT_ENV}: must be a number of seconds, got {raw!r}") from None
    return None if value <= 0 else value


class MasterSession:
    """One channel to the master plus a stub per service the Core API uses.

    Args:
        address: ``host:port`` of the master's gRPC endpoint.
        retry_seconds: how long idempotent calls keep retrying retryable errors (default:
            ``$DET_MASTER_OUTAGE_LIMIT_S``, else :data:`DEFAULT_RETRY_SECONDS`, i.e. no limit).
    """

    def __init__(
        self, address: str, *, retry_seconds: float | None = None, token: str | None = None
    ) -> None:
        where = parse_master(address)
        self.address = where.target
        self.retry_seconds = _outage_limit() if retry_seconds is None else retry_seconds
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None
        # A trial's run token (the launcher's), else a user's: DET_USER/DET_PASS, the cached
        # token of this master, or the loopback quick start (see determined_sdk._auth).
        self._token = token or os.environ.get("DET_SESSION_TOKEN") or None
        self._trial_token = self._token is not None
        self._creds = None if self._trial_token else _auth.env_credentials()
        self._url = where.url
        self._token_lock = threading.Lock()
        channel = make_channel(
            where,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 0),
            ],
        )
        channel = grpc.intercept_channel(channel, BearerToken(lambda: self._token))
        if _TEST_INTERCEPTORS:
            channel = grpc.intercept_channel(channel, *_TEST_INTERCEPTORS)
        self._channel = channel
        self.trials = trial_pb2_grpc.TrialServiceStub(self._channel)
        self.checkpoints = checkpoint_pb2_grpc.CheckpointServiceStub(self._channel)
        self.searcher = searcher_pb2_grpc.SearcherServiceStub(self._channel)
        self.experiments = experiment_pb2_grpc.ExperimentServiceStub(self._channel)
        self.master = master_pb2_grpc.MasterServiceStub(self._channel)
        self.logs = logs_pb2_grpc.LogServiceStub(self._channel)
        if self._token is None:
            if self._creds is not None:
                self._login()
            else:
                cached = _auth.cached_token(self._url)
                self._token = cached[1] if cached else None
            if self._token is None:
                self._login()  # the loopback quick start; a later call says how to log in

    def _login(self) -> bool:
        """Log in as the user of DET_USER/DET_PASS (else the loopback admin); whether it worked."""
        creds = self._creds or _auth.Credentials(_auth.DEFAULT_USER, "")
        try:
            resp = self.master.Login(
                master_pb2.LoginRequest(username=creds.username, password=creds.password),
                timeout=30.0,
            )
        except grpc.RpcError as exc:
            if self._creds is not None:
                raise errors.from_rpc_error(exc) from None
            return False
        self._token = resp.token
        return True

    def call(
        self,
        method: Callable[..., _Resp],
        request: Any,
        *,
        timeout: float = 30.0,
        idempotent: bool = True,
    ) -> _Resp:
        """Call ``method(request)``, translating errors and retrying idempotent calls.

        Args:
            method: a stub method, e.g. ``session.trials.GetTrialContext``.
            request: the request message.
            timeout: per-attempt deadline in seconds.
            idempotent: retry on UNAVAILABLE / DEADLINE_EXCEEDED when True.

        Returns:
            The response message.

        Raises:
            DeterminedError: the matching subclass for the call's status code.
        """

        def once() -> _Resp:
            for attempt in (1, 2):
                sent_with = self._token
                try:
                    return method(request, timeout=timeout)
                except grpc.RpcError as exc:
                    if attempt == 1 and self._relogin_after(exc, sent_with):
                        continue
                    raise errors.from_rpc_error(exc) from None
            raise AssertionError("unreachable")

        if not idempotent:
            return once()
        for attempt in retrying(self.retry_seconds, self._on_retry):
            with attempt:
                result = once()
                self._outage_over()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _on_retry(self, state: tenacity.RetryCallState) -> None:
        """One warning line per outage, however many calls are retrying through it."""
        exc = state.outcome.exception() if state.outcome is not None else None
        with self._outage_lock:
            first = self._outage_since is None
            if first:
                self._outage_since = time.monotonic()
        if first:
            limit = "" if self.retry_seconds is None else f" for up to {self.retry_seconds:g} s"
            logger.warning(
                "master %s unreachable (%s); training goes on, reports are buffered and retried%s",
                self.address,
                type(exc).__name__,
                limit,
            )
        else:
            logger.debug("master call failed (%s); retry %d", exc, state.attempt_number)

    def _outage_over(self) -> None:
        if self._outage_since is None:
            return
        with self._outage_lock:
            since, self._outage_since = self._outage_since, None
        if since is not None:
            logger.info(
                "master %s reachable again after %.1f s", self.address, time.monotonic() - since
            )

    def _relogin_after(self, exc: grpc.RpcError, sent_with: str | None) -> bool:
        """A user's session ended: log in again (a trial token is never renewed)."""
        if self._trial_token or not (
            isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNAUTHENTICATED
        ):
            return False
        with self._token_lock:
            if self._token != sent_with:
                return True
            return self._login()

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()


def _strip_scheme(address: str) -> str:
    for prefix in ("grpc://", "http://", "https://"):
        if address.startswith(prefix):
            address = address[len(prefix) :]
    return address.rstrip("/")
