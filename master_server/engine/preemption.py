"""Stop requests to running trials: the preemption flag, its long poll, grace-period kills.

A pause, cancel or searcher stop sets the trial's preemption reason and starts a grace timer for
*that run*; a kill kills that run at once. Timers and kills carry ``(trial_id, run_id)`` and the
resource manager ignores them when the run is no longer the live one, so a late timer never
touches a newer run (pause, activate, and the new run keeps going).
"""

from __future__ import annotations

import logging
import time

from master_server.engine.state import EngineState, TrialRuntime

logger = logging.getLogger(__name__)

# A stronger reason replaces a weaker one (kill > cancel > pause/searcher).
_STRENGTH: dict[str | None, int] = {None: 0, "searcher": 1, "pause": 1, "cancel": 2, "kill": 3}
KILL_AFTER_TERM_S = 10.0


class Preemption:
    """Asks running trials to stop, and makes them stop when they do not."""

    def __init__(self, state: EngineState, *, grace_s: float) -> None:
        self.s = state
        self.grace_s = grace_s

    def preempt(self, tr: TrialRuntime, reason: str) -> None:
        """Ask ``tr``'s live run to stop for ``reason`` (call with the lock held)."""
        if _STRENGTH[reason] >= _STRENGTH[tr.preempt_reason]:
            tr.preempt_reason = reason
        self.s.notify(tr.experiment_id)
        if reason == "kill":
            self.s.launches.kill(tr.trial_id, tr.run_id)
            return
        self.s.deadlines.call_later(self.grace_s, self._grace_expired, tr.trial_id, tr.run_id)

    def _grace_expired(self, trial_id: int, run_id: int) -> None:
        with self.s.lock:
            tr = self.s.trials.get(trial_id)
            if tr is None or not tr.running or tr.run_id != run_id:
                return
            logger.warning(
                "trial %d run %d did not stop within the grace period; terminating it",
                trial_id,
                run_id,
            )
        if self.s.launches.terminate(trial_id, run_id):
            self.s.deadlines.call_later(KILL_AFTER_TERM_S, self.s.launches.kill, trial_id, run_id)

    def nowait(self, trial_id: int) -> tuple[bool, str | None] | None:
        """(ready, reason) of :meth:`watch` for a live trial, read without locking or I/O
        (safe on an event loop); None when the trial is not live here (ask :meth:`watch`)."""
        tr = self.s.trials.get(trial_id)
        if tr is None:
            return None
        if tr.preempt_reason is not None:
            return True, tr.preempt_reason
        return self.s.closed, None

    def watch(self, trial_id: int, timeout_s: float) -> str | None:
        """Long poll: why the trial should stop (``searcher``, ``pause``, ``cancel``, ``kill``,
        or ``""`` when it no longer runs here) as soon as it should, None at the deadline."""
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        with self.s.lock:
            self.require_trial(trial_id)
            while True:
                tr = self.s.trials.get(trial_id)
                if tr is None:
                    return ""
                if tr.preempt_reason is not None:
                    return tr.preempt_reason
                left = deadline - time.monotonic()
                if self.s.closed or left <= 0:
                    return None
                self.s.changed.wait(left)

    def ack(self, trial_id: int) -> None:
        """The trial heard the stop request. What its exit means is decided by why it was asked
        to stop, so this only checks the trial exists."""
        with self.s.lock:
            self.require_trial(trial_id)

    def require_trial(self, trial_id: int) -> None:
        if trial_id not in self.s.trials:
            self.s.store.get_trial(trial_id)  # raises NotFoundError for unknown ids
