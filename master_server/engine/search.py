"""The search driver: feeds searcher events, carries out its actions, and persists the search.

After every event what changed is saved (:mod:`master_server.engine.search_log`: the inputs the
searcher got and the runtimes of the trials changed: operations handed out, lengths completed,
which trials the searcher closed), so a restarted master continues each search where it was.
Also serves what trials and custom-search drivers ask of the searcher: operations (long poll),
completed operations, progress, custom events.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from determined_sdk.errors import FailedPreconditionError, InvalidArgumentError
from master_server import compat
from master_server.domain import TERMINAL_EXPERIMENT_STATES, TERMINAL_TRIAL_STATES, JSONDict
from master_server.domain import ExperimentState as E
from master_server.domain import TrialState as T
from master_server.engine.state import EngineState, ExperimentRuntime, TrialRuntime
from master_server.searcher.base import Action, Create, Shutdown, Stop, ValidateAfter
from master_server.searcher.custom import CustomSearchMethod
from master_server.searcher.factory import searcher_length_unit

if TYPE_CHECKING:
    from master_server.engine.lifecycle import ExperimentLifecycle
    from master_server.engine.preemption import Preemption
    from master_server.engine.trials import TrialRuns

logger = logging.getLogger(__name__)

#: Inputs recorded without an event (trial progress) that make a progress report save them.
_MAX_PENDING_ENTRIES = 256
#: Progress inputs are saved (one search log record) at most this long after they came, by the
#: next progress report or the liveness watchdog: a master killed meanwhile loses only these.
PROGRESS_SAVE_S = 1.0


class SearchDriver:
    """One searcher per managed experiment, driven by events, persisted after each."""

    lifecycle: ExperimentLifecycle
    runs: TrialRuns
    preemption: Preemption

    def __init__(self, state: EngineState) -> None:
        self.s = state

    # -- persistence -------------------------------------------------------------------------
    def save(self, rt: ExperimentRuntime) -> None:
        """Persist what the last event changed (one small record, or now and then a
        snapshot: :mod:`master_server.engine.search_log`), and the experiment's progress."""
        # Progress first: asking moves the method's monotone floor, which the record keeps.
        progress = self._progress(rt)
        # A record rolled back with the transaction it was part of leaves inputs in no record:
        # only a whole snapshot covers them then.
        self.s.on_rollback(rt.log.forget_snapshot)
        self.s.touch_experiment(rt.experiment_id)
        rt.log.save(self.s.store, rt)
        rt.unsaved_since = None
        self._write_progress(rt, progress)

    def _write_progress(self, rt: ExperimentRuntime, progress: float) -> None:
        """Store the experiment's progress unless this runtime already stored that value."""
        if progress != rt.saved_progress:
            # A rollback of this write rebuilds the runtime, which forgets saved_progress.
            self.s.touch_experiment(rt.experiment_id)
            self.s.store.set_experiment_progress(rt.experiment_id, progress)
            rt.saved_progress = progress

    @staticmethod
    def _progress(rt: ExperimentRuntime) -> float:
        """The experiment's progress in [0, 1], never below what a previous master stored."""
        p = 1.0 if rt.shutdown is not None else rt.searcher.progress()
        return min(1.0, max(0.0, rt.progress_floor, p))

    def save_progress(self) -> None:
        """Save the progress inputs of every search that has held some for
        :data:`PROGRESS_SAVE_S` (the liveness watchdog calls this every second or so)."""
        now = time.monotonic()
        with self.s.lock:
            for rt in list(self.s.exps.values()):
                if rt.unsaved_since is not None and now - rt.unsaved_since >= PROGRESS_SAVE_S:
                    with self.s.atomic():
                        self.save(rt)

    def restore(self, rt: ExperimentRuntime) -> dict[str, Any]:
        """Load ``rt``'s searcher (snapshot + replayed log); returns the saved trial runtimes
        by request id."""
        return rt.log.restore(self.s.store, rt)

    # -- events and actions ------------------------------------------------------------------
    def start(self, rt: ExperimentRuntime) -> None:
        """Start the search (once) and schedule what it asked for."""
        with self.s.atomic():
            if not rt.started:
                rt.started = True
                self.apply(rt, rt.searcher.initial_operations())
            self.save(rt)
        self.runs.schedule()

    def event(self, rt: ExperimentRuntime, actions: list[Action]) -> None:
        """Carry out the actions a searcher event returned, persist, and move things on.

        The trials it creates or finishes, the event's search log record and the experiment's
        end are one transaction (with what the caller wrote in its own
        :meth:`~master_server.engine.state.EngineState.atomic` block, such as the trial's end
        state that caused the event).
        """
        with self.s.atomic():
            self.apply(rt, actions)
            self.save(rt)
            self.lifecycle.maybe_finish(rt.experiment_id)
        self.runs.schedule()

    def apply(self, rt: ExperimentRuntime, actions: list[Action]) -> None:
        """Carry out searcher actions (and the actions those cause), in order."""
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, Create):
                pending.extend(self._create_trial(rt, action))
            elif isinstance(action, ValidateAfter):
                tr = rt.trials.get(action.request_id)
                if tr is not None and (not tr.ops or action.length > tr.ops[-1]):
                    tr.ops.append(action.length)
                    rt.dirty.add(tr.request_id)
            elif isinstance(action, Stop):
                tr = rt.trials.get(action.request_id)
                if tr is not None and not tr.closed:
                    tr.closed = True
                    rt.dirty.add(tr.request_id)
                    self._close_trial(tr)
            elif isinstance(action, Shutdown) and rt.shutdown is None:
                rt.shutdown = action
                for tr in rt.trials.values():
                    if not tr.closed:
                        tr.closed = True
                        rt.dirty.add(tr.request_id)
                        self._close_trial(tr)
        self.s.notify(rt.experiment_id)

    def _create_trial(self, rt: ExperimentRuntime, action: Create) -> list[Action]:
        store = self.s.store
        if action.request_id in rt.trials:
            # Created by a master that died before recording this event: the trial it left
            # (recovered with the experiment) is this one; searchers are deterministic.
            rt.dirty.add(action.request_id)
            return rt.searcher.on_trial_created(action.request_id)
        warm = None
        if action.checkpoint_from is not None:
            parent = rt.trials.get(action.checkpoint_from)
            if parent is not None:
                warm = store.get_trial(parent.trial_id).latest_checkpoint_uuid
        if warm is None:
            warm = compat.warm_start_checkpoint(store, rt.config)
        trial = store.create_trial(
            rt.experiment_id,
            request_id=action.request_id,
            hparams=action.hparams,
            warm_start_checkpoint_uuid=warm,
        )
        tr = TrialRuntime(trial.id, rt.experiment_id, action.request_id)
        rt.trials[action.request_id] = tr
        rt.dirty.add(action.request_id)
        self.s.trials[trial.id] = tr
        if store.get_experiment_state(rt.experiment_id) == E.ACTIVE:
            self.s.rm.request(trial.id, rt.slots, rt.pool)
        else:
            self.s.set_trial_state(trial.id, T.PAUSED)
        return rt.searcher.on_trial_created(action.request_id)

    def _close_trial(self, tr: TrialRuntime) -> None:
        """The searcher is done with a trial: stop it if it runs, finish it if it waits."""
        if tr.running:
            self.preemption.preempt(tr, "searcher")
            return
        trial = self.s.store.get_trial(tr.trial_id)
        if trial.state in TERMINAL_TRIAL_STATES:
            return
        self.s.rm.withdraw(tr.trial_id)
        self.s.set_trial_state(tr.trial_id, T.COMPLETED, exit_reason="stopped by the searcher")
        self.s.trials.pop(tr.trial_id, None)

    # -- what trials ask of the searcher -----------------------------------------------------
    def live(self, trial_id: int) -> tuple[TrialRuntime, ExperimentRuntime | None]:
        """The runtime of a live trial (and of its managed experiment), or a clear error."""
        tr = self.s.trials.get(trial_id)
        if tr is None:
            trial = self.s.store.get_trial(trial_id)
            raise FailedPreconditionError(
                f"trial {trial_id} is {trial.state.value}; it is not running"
            )
        return tr, self.s.exps.get(tr.experiment_id)

    def _op_state(self, trial_id: int) -> tuple[bool, tuple[int | None, bool]]:
        """(ready, (length, done)) of a trial's searcher operation, from memory only."""
        tr = self.s.trials.get(trial_id)
        if tr is None or tr.closed:
            return True, (None, True)
        rt = self.s.exps.get(tr.experiment_id)
        if rt is None:  # unmanaged: no searcher
            return True, (None, True)
        op = tr.current_op()
        if op is not None:
            return True, (op, False)
        if (
            not tr.ops
            and searcher_length_unit(rt.config) is None
            and not isinstance(rt.searcher.inner, CustomSearchMethod)
        ):
            return True, (None, True)  # this searcher hands out no lengths (a custom driver may)
        return self.s.closed, (None, False)

    def operation_nowait(self, trial_id: int) -> tuple[bool, tuple[int | None, bool]] | None:
        """:meth:`_op_state` of a live trial without locking or I/O (safe on an event loop);
        None when the trial is not live here (ask :meth:`get_operation` instead)."""
        if trial_id not in self.s.trials:
            return None
        return self._op_state(trial_id)

    def get_operation(self, trial_id: int, timeout_s: float) -> tuple[int | None, bool]:
        """Long poll for the trial's current op: (length, False), or (None, True) when done."""
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        with self.s.lock:
            self.preemption.require_trial(trial_id)
            while True:
                ready, value = self._op_state(trial_id)
                left = deadline - time.monotonic()
                if ready or left <= 0:
                    return value
                self.s.changed.wait(left)

    def complete_operation(self, trial_id: int, length: int, metric: float) -> None:
        with self.s.lock:
            tr, rt = self.live(trial_id)
            if rt is None:
                return
            if length <= tr.completed_length:
                return  # a retried report of an op already completed
            if not tr.ops or length > tr.ops[-1]:
                raise InvalidArgumentError(
                    f"length: trial {trial_id} has no searcher operation of length {length}"
                    f" (current: {tr.current_op()})"
                )
            tr.completed_length = length
            rt.dirty.add(tr.request_id)
            self.s.touch(trial_id)
            self.event(rt, rt.searcher.on_validation_completed(tr.request_id, metric, length))

    def on_validation_metrics(self, trial_id: int, metrics: dict[str, float], steps: int) -> None:
        """A validation report with the searcher metric: with ``time_metric`` (metrics-only
        trials) it completes a validation for the searcher; otherwise it is shown to the
        searcher as a mid-operation validation (early stopping's patience and target)."""
        cfg = self.config_of_trial(trial_id)
        s = cfg["searcher"]
        time_metric, metric = s.get("time_metric"), s.get("metric")
        if metric not in metrics:
            return
        if not time_metric:
            with self.s.lock:
                tr = self.s.trials.get(trial_id)  # a late report of an ended trial changes nothing
                rt = self.s.exps.get(tr.experiment_id) if tr is not None else None
                if tr is None or rt is None or tr.closed:
                    return
                actions = rt.searcher.on_validation_reported(tr.request_id, metrics[metric], steps)
                if actions is not None:
                    self.event(rt, actions)
            return
        if time_metric not in metrics:
            return
        with self.s.lock:
            tr, rt = self.live(trial_id)
            if rt is None or tr.closed:
                return
            value = metrics[time_metric]
            length = int(value) if math.isfinite(value) else 0
            self.event(
                rt, rt.searcher.on_validation_completed(tr.request_id, metrics[metric], length)
            )

    def config_of_trial(self, trial_id: int) -> JSONDict:
        tr = self.s.trials.get(trial_id)
        exp_id = (
            tr.experiment_id if tr is not None else self.s.store.get_trial(trial_id).experiment_id
        )
        return self.s.experiment_config(exp_id)

    def report_progress(self, trial_id: int, progress: float) -> None:
        if not (0.0 <= progress <= 1.0) or math.isnan(progress):
            raise InvalidArgumentError(f"progress: must be within [0, 1], got {progress}")
        with self.s.lock, self.s.atomic():  # the trial's and the experiment's progress
            tr, rt = self.live(trial_id)
            self.s.touch(trial_id)
            self.s.store.update_trial(trial_id, progress=progress)
            if rt is not None:
                op = tr.current_op()
                if op is not None:
                    rt.searcher.on_trial_progress(tr.request_id, progress * op)
                    if rt.unsaved_since is None:
                        rt.unsaved_since = time.monotonic()
                # Saved in batches (the searcher's inputs and the trial runtimes they changed),
                # so memory stays bounded and a master killed loses at most PROGRESS_SAVE_S.
                if rt.searcher.pending_entries >= _MAX_PENDING_ENTRIES or (
                    rt.unsaved_since is not None
                    and time.monotonic() - rt.unsaved_since >= PROGRESS_SAVE_S
                ):
                    self.save(rt)
                    return
                self._write_progress(rt, self._progress(rt))

    def report_early_exit(self, trial_id: int, reason: str) -> None:
        if reason not in ("INVALID_HP", "ERRORED", "USER_CANCELED"):
            raise InvalidArgumentError(
                f"reason: must be INVALID_HP, ERRORED or USER_CANCELED, got {reason!r}"
            )
        with self.s.lock:
            tr, _ = self.live(trial_id)
            tr.early_exit = reason

    # -- custom search (the user's driver) -------------------------------------------------
    def _custom(self, experiment_id: int) -> tuple[ExperimentRuntime, CustomSearchMethod]:
        exp = self.s.store.get_experiment(experiment_id)
        rt = self.s.exps.get(experiment_id)
        method = rt.searcher.inner if rt is not None else None
        if rt is None or not isinstance(method, CustomSearchMethod):
            raise FailedPreconditionError(
                f"experiment {experiment_id} does not use the custom searcher "
                f"(searcher.name: {exp.searcher_name}); it has no events to read"
            )
        return rt, method

    def custom_events(
        self, experiment_id: int, after_id: int, timeout_s: float
    ) -> tuple[list[JSONDict], bool]:
        """Long poll for custom-search events after ``after_id``; (events, search over)."""
        if after_id < 0:
            raise InvalidArgumentError(f"after_event_id: must be >= 0, got {after_id}")
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        with self.s.lock:
            rt, _ = self._custom(experiment_id)
            while True:
                events = rt.searcher.custom_events_after(after_id)
                state = self.s.store.get_experiment_state(experiment_id)
                over = state in TERMINAL_EXPERIMENT_STATES
                left = deadline - time.monotonic()
                if events or over or left <= 0 or self.s.closed:
                    return events, over
                self.s.changed.wait(left)

    def post_custom_actions(
        self, experiment_id: int, actions: list[JSONDict], progress: float | None, ack_id: int = 0
    ) -> None:
        """Carry out actions from a custom-search driver (checked as a whole first)."""
        with self.s.lock:
            rt, _ = self._custom(experiment_id)
            state = self.s.store.get_experiment_state(experiment_id)
            if state in TERMINAL_EXPERIMENT_STATES:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is {state.value}; the search is over"
                )
            self.event(rt, rt.searcher.custom_post(actions, ack_id, progress))
