"""Preemption: :class:`PreemptContext` tells the training loop when to checkpoint and exit.

A background thread long-polls ``WatchPreemption`` (about 30 s a poll, again and again until
the context closes or the master says "stop"); :meth:`PreemptContext.should_preempt` reads the
cached answer, so calling it every batch is cheap. On the cluster the first poll starts at the
first ``should_preempt`` call or a second after the context is made, whichever comes first: a
trial that ends sooner (a trivial one) costs the master no long poll to hold and cancel.
Pause, cancel, kill and a searcher stop all arrive this way. Acknowledging (``AckPreemption``,
sent once) only tells the master that the trial heard the request; it does not decide what the
trial's exit means. The master decides that from why it asked the trial to stop: after a pause
the trial ends PAUSED, after a cancel or kill CANCELED, after a searcher stop COMPLETED.
"""

from __future__ import annotations

import enum
import logging
import threading
from typing import Any

import grpc

from core_api._channel import MasterSession, is_retryable
from core_api._distributed import DistributedContext
from core_api._train import ContextClosedError
from determined_sdk import errors
from determined_sdk.proto import searcher_pb2

logger = logging.getLogger(__name__)

#: On the cluster, how long the watcher waits before its first poll unless ``should_preempt``
#: is called sooner (until then the answer is False, as it is while a first poll is in flight).
FIRST_POLL_DELAY_S = 1.0


class PreemptMode(enum.Enum):
    """Which ranks watch the master for preemption."""

    #: The chief watches; workers get the chief's answer by broadcast on every call (so all
    #: ranks must call ``should_preempt`` together).
    WorkersAskChief = "WORKERS_ASK_CHIEF"
    #: Only the chief watches and only the chief may call ``should_preempt``.
    ChiefOnly = "CHIEF_ONLY"
    #: Every rank watches the master itself; no collective per call.
    WorkersAskMaster = "WORKERS_ASK_MASTER"


class PreemptContext:
    """Answers "should this trial stop now?".

    Args:
        session: the master session, or None (off-cluster: never preempted).
        dist: the distributed context.
        trial_id: the trial.
        mode: see :class:`PreemptMode`.
        poll_timeout: seconds each long poll waits on the master.
        first_poll_delay: seconds the watcher waits before its first poll unless
            :meth:`should_preempt` is called sooner (0: at once, as an unmanaged run's
            heartbeat must).
    """

    def __init__(
        self,
        session: MasterSession | None,
        dist: DistributedContext,
        *,
        trial_id: int = 0,
        mode: PreemptMode = PreemptMode.WorkersAskChief,
        poll_timeout: float = 30.0,
        first_poll_delay: float = 0.0,
    ) -> None:
        if not isinstance(mode, PreemptMode):
            mode = PreemptMode(mode)
        self._session = session
        self._dist = dist
        self._trial_id = trial_id
        self._mode = mode
        self._poll_timeout = poll_timeout
        self._first_poll_delay = first_poll_delay
        self._preempted = threading.Event()
        self._stop = threading.Event()
        self._asked = threading.Event()  # should_preempt was called (or close): poll now
        self._lock = threading.Lock()
        self._inflight: Any = None
        self._error: BaseException | None = None
        self._acked = False
        self._closed = False
        self._watcher: threading.Thread | None = None
        watches = mode is PreemptMode.WorkersAskMaster or dist.is_chief
        if session is not None and watches:
            self._watcher = threading.Thread(
                target=self._watch, name="core_api-preemption-watcher", daemon=True
            )
            self._watcher.start()

    @property
    def mode(self) -> PreemptMode:
        """The mode this context runs in."""
        return self._mode

    def should_preempt(self, auto_ack: bool = True) -> bool:
        """Whether the trial should checkpoint and exit now.

        Args:
            auto_ack: on the first True, acknowledge to the master (the chief sends
                ``AckPreemption`` once).

        Returns:
            The same answer on every rank (in WorkersAskChief mode, by broadcast).

        Raises:
            RuntimeError: a worker called it in ChiefOnly mode.
            DeterminedError: the watcher failed with a non-retryable error.
        """
        if self._closed:
            raise ContextClosedError("the core_api context is closed (close() was called)")
        dist = self._dist
        if self._mode is PreemptMode.ChiefOnly and not dist.is_chief:
            raise RuntimeError("should_preempt() in ChiefOnly mode may only be called on the chief")
        if not self._asked.is_set():
            self._asked.set()
        err, self._error = self._error, None
        answer = self._preempted.is_set()
        if self._mode is PreemptMode.WorkersAskChief and dist.size > 1:
            # The chief's failure travels with the answer, so no worker waits for a broadcast
            # that never comes.
            msg = ("error", f"{type(err).__name__}: {err}") if err is not None else ("ok", answer)
            msg = dist.broadcast(msg)
            if err is not None:
                raise err
            if msg[0] == "error":
                raise RuntimeError(f"the chief's preemption watcher failed: {msg[1]}")
            answer = bool(msg[1])
        elif err is not None:
            raise err
        if answer and auto_ack:
            self.acknowledge_preemption_signal()
        return answer

    def acknowledge_preemption_signal(self) -> None:
        """Tell the master this trial got the signal and will exit (chief only, sent once)."""
        if self._acked or self._session is None or not self._dist.is_chief:
            self._acked = True
            return
        session = self._session
        session.call(
            session.searcher.AckPreemption,
            searcher_pb2.AckPreemptionRequest(trial_id=self._trial_id),
        )
        self._acked = True

    def close(self) -> None:
        """Stop the watcher (cancelling its long poll) and refuse further calls."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._asked.set()
        with self._lock:
            if self._inflight is not None:
                self._inflight.cancel()
        if self._watcher is not None:
            self._watcher.join()

    def _watch(self) -> None:
        session = self._session
        assert session is not None
        request = searcher_pb2.WatchPreemptionRequest(
            trial_id=self._trial_id, timeout_seconds=self._poll_timeout
        )
        backoff = 0.1
        if self._first_poll_delay > 0:
            self._asked.wait(self._first_poll_delay)
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                future = session.searcher.WatchPreemption.future(
                    request, timeout=self._poll_timeout + 30.0
                )
                self._inflight = future
            try:
                resp = future.result()
            except grpc.FutureCancelledError:
                return
            except grpc.RpcError as exc:
                if self._stop.is_set() or (
                    isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.CANCELLED
                ):
                    return
                if is_retryable(exc):
                    logger.debug("preemption watch failed (%s); retrying", exc.code())
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                self._error = errors.from_rpc_error(exc)
                logger.warning("preemption watcher stopped: %s", self._error)
                return
            finally:
                with self._lock:
                    self._inflight = None
            backoff = 0.1
            if resp.preempt:
                # The searcher's stop is how every searched trial ends (its exit reason says
                # whether early): not news in the log. A pause, cancel or kill is.
                level = logging.DEBUG if resp.reason == "searcher" else logging.INFO
                logger.log(level, "%s", _stop_message(resp.reason))
                self._preempted.set()
                return


_STOP_MESSAGES = {
    "searcher": "the searcher needs no more training from this trial; it should stop",
    "pause": "the experiment is being paused; this trial should checkpoint and stop",
    "cancel": "the experiment is being canceled; this trial should stop",
    "kill": "this trial is being killed",
}


def _stop_message(reason: str) -> str:
    """Why the master asks this trial to stop, in words (never just "preemption")."""
    return _STOP_MESSAGES.get(reason, "the master asked this trial to stop")
