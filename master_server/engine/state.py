"""The engine's shared runtime state: one lock, the runtimes of live experiments and trials.

One lock guards the whole state machine (experiment states, trial runtimes, each experiment's
searcher and the resource manager's queue). Long polls wait on :attr:`EngineState.changed`, a
condition of that lock. Every state change goes through :meth:`EngineState.set_trial_state` /
:meth:`EngineState.set_exp_state`, which check the edge against
:mod:`master_server.statemachine`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from master_server.domain import (
    TERMINAL_EXPERIMENT_STATES,
    TERMINAL_TRIAL_STATES,
    Experiment,
    ExperimentState,
    JSONDict,
    Trial,
    TrialState,
)
from master_server.engine.jobs import JobRunner
from master_server.engine.launches import Launches
from master_server.engine.search_log import SearchLog
from master_server.engine.timers import Deadlines
from master_server.rm.base import ResourceManager
from master_server.searcher.base import Shutdown
from master_server.searcher.journal import JournaledSearch
from master_server.statemachine import check_experiment_transition, check_trial_transition
from master_server.store.base import Store

logger = logging.getLogger(__name__)


@dataclass
class TrialRuntime:
    """What the master knows about a live trial beyond its database row."""

    trial_id: int
    experiment_id: int
    request_id: str
    ops: list[int] = field(default_factory=list)  # absolute lengths handed out, increasing
    completed_length: int = 0
    closed: bool = False  # the searcher said Stop: the trial completes when it exits
    preempt_reason: str | None = None  # pause | cancel | kill | searcher | None
    early_exit: str | None = None
    running: bool = False
    run_id: int = 0
    last_activity: float = field(default_factory=time.monotonic)  # for ``max_idle``
    idle_killed: bool = False
    # An unmanaged run's last sign of life (a preemption poll or any report), monotonic.
    last_heartbeat: float = field(default_factory=time.monotonic)

    def current_op(self) -> int | None:
        """The first operation length not completed yet, if any."""
        return next((length for length in self.ops if length > self.completed_length), None)

    def to_json(self) -> JSONDict:
        """What is saved with the searcher snapshot."""
        return {
            "trial_id": self.trial_id,
            "ops": self.ops,
            "completed_length": self.completed_length,
            "closed": self.closed,
        }


@dataclass
class ExperimentRuntime:
    """A managed experiment's searcher and its trials' runtimes."""

    experiment_id: int
    config: JSONDict
    searcher: JournaledSearch  # records its inputs for the searcher event log
    started: bool = False
    shutdown: Shutdown | None = None
    trials: dict[str, TrialRuntime] = field(default_factory=dict)  # by request id
    # Request ids whose runtime changed since the last save (saved with the next log record).
    dirty: set[str] = field(default_factory=set)
    log: SearchLog = field(default_factory=SearchLog)
    # When the oldest input not yet in the search log (a progress report) was recorded.
    unsaved_since: float | None = None
    # The experiment's progress as a previous master stored it: never shown lower again.
    progress_floor: float = 0.0
    # The progress this runtime last wrote (None: not yet): an unchanged one is not rewritten.
    # A rolled-back write rebuilds the runtime from the database, which forgets this.
    saved_progress: float | None = None

    @property
    def slots(self) -> int:
        return int(self.config["resources"]["slots_per_trial"])

    @property
    def pool(self) -> str:
        """``resources.resource_pool`` ("" for the default pool)."""
        return str(self.config["resources"].get("resource_pool") or "")


class EngineState:
    """State shared by the engine's components (see the module docstring)."""

    def __init__(self, store: Store, rm: ResourceManager) -> None:
        self.store = store
        self.rm = rm
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.exps: dict[int, ExperimentRuntime] = {}
        self.trials: dict[int, TrialRuntime] = {}  # by trial id
        self.config_cache: dict[int, JSONDict] = {}
        self.closed = False
        self.jobs = JobRunner(store)
        #: Grace periods of stop requests (one thread for all of them).
        self.deadlines = Deadlines("grace-timers")
        #: Run starts, made off the lock; stop orders for runs go through it too.
        self.launches = Launches(rm)
        self.listeners: list[Callable[[int | None], None]] = []
        self.recovered = threading.Event()  # set once recovery after start has run
        self._atomic_depth = 0
        self._after_commit: list[Callable[[], None]] = []
        self._on_rollback: list[Callable[[], None]] = []
        self._notify_later: list[int | None] = []
        # Experiments whose runtime the open atomic block changed: rebuilt from the database
        # when the block is rolled back (see :meth:`atomic`).
        self._touched: set[int] = set()
        #: Rebuilds one experiment's runtime from the database (set by the lifecycle).
        self.resync: Callable[[int], None] | None = None
        #: Experiments whose rebuild failed too: retried by the liveness watchdog.
        self.needs_resync: set[int] = set()
        self._resyncing = False

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Make everything the engine writes inside one store transaction (call with the lock
        held; nesting joins the outer block).

        What the engine does on an event (a trial's end state, the trials the searcher
        created, the search log record of the event, the experiment's end) then happens
        together or not at all: a master killed half way leaves the state before the event,
        and the event comes again (the run's exit is reported again to the next master).
        What others would see or act on (long-poll wake-ups of the asyncio server, new runs
        started, the job runner) waits for the commit (:meth:`after_commit`).
        """
        if self._atomic_depth:
            self._atomic_depth += 1
            try:
                yield
            finally:
                self._atomic_depth -= 1
            return
        self._atomic_depth = 1
        rolled_back = False
        try:
            with self.store.transaction():
                yield
        except BaseException:
            rolled_back = True
            undo, self._on_rollback = self._on_rollback, []
            for fn in undo:
                fn()
            raise
        finally:
            self._atomic_depth = 0
            self._on_rollback = []
            touched, self._touched = self._touched, set()
            todo, self._after_commit = self._after_commit, []
            woken, self._notify_later = self._notify_later, []
            if rolled_back:
                # Memory moved on with the writes the database just undid (a trial ended, the
                # searcher decided, trials were queued): rebuild those experiments from what
                # is stored, as a restart would, before anything else acts on them.
                self.needs_resync |= touched
                self.resync_pending()
            for experiment_id in woken:  # after a rollback too: a wake-up is harmless
                self._tell_listeners(experiment_id)
            for fn in todo:  # as is starting runs or jobs
                fn()

    def touch_experiment(self, experiment_id: int) -> None:
        """The open :meth:`atomic` block changes ``experiment_id``'s runtime: rebuild it from
        the database if the block is rolled back."""
        if self._atomic_depth:
            self._touched.add(experiment_id)

    def resync_pending(self) -> None:
        """Rebuild the runtimes of experiments a rolled-back block left ahead of the database
        (call with the lock held); one whose rebuild fails too stays pending and is tried
        again by the liveness watchdog."""
        if self.resync is None or self._atomic_depth or self._resyncing:
            return  # a rebuild's own failed block leaves its experiment pending
        self._resyncing = True
        try:
            for experiment_id in sorted(self.needs_resync):
                try:
                    self.resync(experiment_id)
                except Exception:
                    logger.exception(
                        "experiment %d: could not rebuild its state after a failed write; retrying",
                        experiment_id,
                    )
                else:
                    self.needs_resync.discard(experiment_id)
        finally:
            self._resyncing = False

    @property
    def in_atomic(self) -> bool:
        """Whether an :meth:`atomic` block is open (on the thread holding the lock)."""
        return self._atomic_depth > 0

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the open :meth:`atomic` block ends (now when none is open); the
        same function is queued once."""
        if not self._atomic_depth:
            fn()
        elif fn not in self._after_commit:
            self._after_commit.append(fn)

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` if the open :meth:`atomic` block is rolled back (nothing when none is
        open: each write then commits on its own)."""
        if self._atomic_depth:
            self._on_rollback.append(fn)

    def notify(self, experiment_id: int | None) -> None:
        """Wake the long polls of ``experiment_id`` (None: of every experiment); call with the
        lock held. Threads waiting on :attr:`changed` all wake (they read after the lock is
        released, so after any commit); listeners (the asyncio server's waker, which reads
        without the lock) hear which experiment changed once it is committed."""
        self.changed.notify_all()
        if not self._atomic_depth:
            self._tell_listeners(experiment_id)
        elif experiment_id not in self._notify_later:
            self._notify_later.append(experiment_id)

    def _tell_listeners(self, experiment_id: int | None) -> None:
        for fn in self.listeners:
            fn(experiment_id)

    def experiment_config(self, experiment_id: int) -> JSONDict:
        cfg = self.config_cache.get(experiment_id)
        if cfg is None:
            cfg = self.store.get_experiment(experiment_id).config
            self.config_cache[experiment_id] = cfg
        return cfg

    def touch(self, trial_id: int) -> None:
        """The trial made progress (a report reached the master); lock-free on purpose."""
        tr = self.trials.get(trial_id)
        if tr is not None:
            tr.last_activity = tr.last_heartbeat = time.monotonic()

    def heartbeat(self, trial_id: int) -> None:
        """The trial's run is alive (it polls): not progress, so ``max_idle`` does not hear
        it; lock-free on purpose (called on the event loop)."""
        tr = self.trials.get(trial_id)
        if tr is not None:
            tr.last_heartbeat = time.monotonic()

    def live_trials_of(self, experiment_id: int) -> list[TrialRuntime]:
        return [t for t in self.trials.values() if t.experiment_id == experiment_id]

    def set_trial_state(self, trial_id: int, state: TrialState, **fields: Any) -> Trial:
        cur = self.store.get_trial(trial_id)
        check_trial_transition(trial_id, cur.state, state)
        self.touch_experiment(cur.experiment_id)
        if state in TERMINAL_TRIAL_STATES:
            fields.setdefault("end_time", time.time())
        return self.store.update_trial(trial_id, state=state, **fields)

    def set_exp_state(self, experiment_id: int, state: ExperimentState, action: str) -> Experiment:
        cur = self.store.get_experiment(experiment_id)
        check_experiment_transition(experiment_id, cur.state, state, action)
        self.touch_experiment(experiment_id)
        kw: dict[str, Any] = {"state": state}
        gc = state in TERMINAL_EXPERIMENT_STATES and not cur.unmanaged
        if state in TERMINAL_EXPERIMENT_STATES:
            kw["end_time"] = time.time()
        if gc:
            # Recorded before the final state is written, so no restart can forget it.
            self.store.add_job(
                "gc_experiment", f"gc_experiment:{experiment_id}", {"experiment_id": experiment_id}
            )
        exp = self.store.update_experiment(experiment_id, **kw)
        if gc:
            self.after_commit(self.jobs.kick)
        return exp
