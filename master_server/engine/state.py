"""The engine's shared runtime state: one lock, the runtimes of live experiments and trials.

One lock guards the whole state machine (experiment states, trial runtimes, each experiment's
searcher and the resource manager's queue). Long polls wait on :attr:`EngineState.changed`, a
condition of that lock. Every state change goes through :meth:`EngineState.set_trial_state` /
:meth:`EngineState.set_exp_state`, which check the edge against
:mod:`master_server.statemachine`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
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
from master_server.engine.search_log import SearchLog
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
        self.listeners: list[Callable[[int | None], None]] = []

    def notify(self, experiment_id: int | None) -> None:
        """Wake the long polls of ``experiment_id`` (None: of every experiment); call with the
        lock held. Threads waiting on :attr:`changed` all wake; listeners (the asyncio server's
        waker) hear which experiment changed."""
        self.changed.notify_all()
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
            tr.last_activity = time.monotonic()

    def live_trials_of(self, experiment_id: int) -> list[TrialRuntime]:
        return [t for t in self.trials.values() if t.experiment_id == experiment_id]

    def set_trial_state(self, trial_id: int, state: TrialState, **fields: Any) -> Trial:
        cur = self.store.get_trial(trial_id)
        check_trial_transition(trial_id, cur.state, state)
        if state in TERMINAL_TRIAL_STATES:
            fields.setdefault("end_time", time.time())
        return self.store.update_trial(trial_id, state=state, **fields)

    def set_exp_state(self, experiment_id: int, state: ExperimentState, action: str) -> Experiment:
        cur = self.store.get_experiment(experiment_id)
        check_experiment_transition(experiment_id, cur.state, state, action)
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
            self.jobs.kick()
        return exp
