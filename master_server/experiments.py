"""The experiment service: the engine's components behind the names the servicers call.

The engine is split by concern (see :mod:`master_server.engine`): experiment lifecycle, the
search driver and its persistence, trial runs, preemption. All of them share one
:class:`~master_server.engine.state.EngineState` (one lock) and place runs only through a
:class:`~master_server.rm.base.ResourceManager`. This class wires them together and keeps the
public method names stable for the servicers.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from determined_sdk.errors import InvalidArgumentError
from master_server.containment import StorageRoots
from master_server.domain import Experiment, JSONDict, Trial
from master_server.engine.jobs import JobRunner
from master_server.engine.lifecycle import ExperimentLifecycle
from master_server.engine.preemption import Preemption
from master_server.engine.search import SearchDriver
from master_server.engine.state import EngineState, ExperimentRuntime, TrialRuntime
from master_server.engine.trials import TrialRuns
from master_server.rm.base import ResourceManager
from master_server.store.base import Store

__all__ = ["ExperimentRuntime", "ExperimentService", "TrialRuntime"]
logger = logging.getLogger(__name__)


class ExperimentService:
    """Creates experiments, drives their searchers, schedules and supervises their trials.

    Args:
        store: the database.
        rm: where trial runs are placed.
        checkpoint_dir: default checkpoint storage of new experiments.
        master_address: the address trials call back (read when a run starts).
        max_model_bytes: size limit of an experiment's model directory.
        preempt_grace_s: how long a trial may take to stop after a pause/cancel before it is
            terminated.
        unmanaged_timeout_s: an unmanaged run (a script run by hand) that showed no sign of
            life for this long ends its trial in ERROR (its process is presumed dead).
    """

    def __init__(
        self,
        store: Store,
        rm: ResourceManager,
        *,
        checkpoint_dir: pathlib.Path,
        master_address: Callable[[], str],
        max_model_bytes: int = 64 * 2**20,
        preempt_grace_s: float = 30.0,
        storage_roots: StorageRoots | None = None,
        unmanaged_timeout_s: float = 60.0,
    ) -> None:
        if not unmanaged_timeout_s > 0:
            raise InvalidArgumentError(
                f"unmanaged_timeout_s: must be > 0 seconds, got {unmanaged_timeout_s}"
            )
        self.store = store
        self.rm = rm
        # Where checkpoints may live: the master reads and deletes only inside these.
        self.storage_roots = storage_roots or StorageRoots([checkpoint_dir])
        self.state = EngineState(store, rm)
        self._stop_watchdog = threading.Event()
        self.lifecycle = ExperimentLifecycle(
            self.state,
            checkpoint_dir=checkpoint_dir,
            max_model_bytes=max_model_bytes,
            storage_roots=self.storage_roots,
        )
        self.search = SearchDriver(self.state)
        self.runs = TrialRuns(self.state, master_address, unmanaged_timeout_s=unmanaged_timeout_s)
        self.preemption = Preemption(self.state, grace_s=preempt_grace_s)
        # The components call each other (an exit feeds the searcher, whose actions start or
        # stop runs and may end the experiment); they are wired here, once.
        self.lifecycle.search, self.lifecycle.runs = self.search, self.runs
        self.search.lifecycle, self.search.runs = self.lifecycle, self.runs
        self.runs.lifecycle, self.runs.search = self.lifecycle, self.search
        for part in (self.lifecycle, self.search, self.runs):
            part.preemption = self.preemption
        self.state.resync = self.lifecycle.resync
        self.state.launches.on_exit = self.runs.on_exit
        self.state.launches.on_failed = self.runs.launch_failed

    @property
    def jobs(self) -> JobRunner:
        """Durable side work (file removals, deletions, checkpoint GC)."""
        return self.state.jobs

    # -- experiments ---------------------------------------------------------------------------
    def create_experiment(
        self,
        config_text: str,
        model_definition: bytes,
        *,
        activate: bool,
        project_id: int,
        warnings: list[str] | None = None,
    ) -> Experiment:
        """Validate and store a new experiment; start its search when ``activate``.

        ``warnings`` (if given) receives what the user should be told about the config."""
        return self.lifecycle.create(
            config_text,
            model_definition,
            activate=activate,
            project_id=project_id,
            warnings=warnings,
        )

    def create_unmanaged_trial(
        self, config_text: str, hparams: JSONDict, experiment_id: int, project_id: int
    ) -> tuple[Experiment, Trial]:
        """Register a trial that runs outside the master (a script or notebook)."""
        return self.lifecycle.create_unmanaged_trial(
            config_text, hparams, experiment_id, project_id
        )

    def activate(self, experiment_id: int) -> Experiment:
        return self.lifecycle.activate(experiment_id)

    def pause(self, experiment_id: int) -> Experiment:
        return self.lifecycle.pause(experiment_id)

    def cancel(self, experiment_id: int, *, kill: bool = False) -> Experiment:
        return self.lifecycle.cancel(experiment_id, kill=kill)

    def set_archived(self, experiment_id: int, archived: bool) -> Experiment:
        return self.lifecycle.set_archived(experiment_id, archived)

    def patch(
        self,
        experiment_id: int,
        *,
        name: str | None = None,
        description: str | None = None,
        notes: str | None = None,
        add_labels: Sequence[str] = (),
        remove_labels: Sequence[str] = (),
    ) -> Experiment:
        """Rename, describe and relabel an experiment (None / empty = leave as it is)."""
        store = self.state.store
        exp = store.get_experiment(experiment_id)
        kw: dict[str, Any] = {}
        if name is not None:
            if not name.strip():
                raise InvalidArgumentError("name: must not be empty")
            kw["name"] = name
        if description is not None:
            kw["description"] = description
        if notes is not None:
            kw["notes"] = notes
        if add_labels or remove_labels:
            gone = set(remove_labels)
            labels = [x for x in exp.labels if x not in gone]
            labels += [x for x in add_labels if x not in labels]
            if any(not x.strip() for x in labels):
                raise InvalidArgumentError("labels: a label must not be empty")
            kw["labels"] = labels
        return store.update_experiment(experiment_id, **kw) if kw else exp

    def delete(self, experiment_id: int) -> None:
        self.lifecycle.delete(experiment_id)

    def move(self, experiment_id: int, project_id: int) -> Experiment:
        return self.lifecycle.move(experiment_id, project_id)

    def experiment_config(self, experiment_id: int) -> JSONDict:
        return self.state.experiment_config(experiment_id)

    def experiment_config_of_trial(self, trial_id: int) -> JSONDict:
        return self.search.config_of_trial(trial_id)

    def best_searcher_validation(self, experiment_id: int) -> float | None:
        return self.lifecycle.best_searcher_validation(experiment_id)

    def searcher_metric_of(self, trial: Trial) -> float | None:
        return self.lifecycle.searcher_metric_of(trial)

    @property
    def total_slots(self) -> int:
        """All slots of the resource manager."""
        return self.rm.total_slots

    def free_slots(self) -> int:
        """Slots not held by a running trial."""
        with self.state.lock:
            return self.rm.free_slots

    # -- trials ------------------------------------------------------------------------------
    def kill_trial(self, trial_id: int) -> Trial:
        return self.runs.kill(trial_id)

    def on_trial_exit(self, trial_id: int, run_id: int, exit_code: int) -> None:
        """A run ended (reported by its supervisor or the resource manager); idempotent."""
        self.runs.on_exit(trial_id, run_id, exit_code)

    def record_activity(self, trial_id: int) -> None:
        """A report of the trial reached the master (metrics, checkpoint): it is not idle."""
        self.state.touch(trial_id)

    def report_progress(self, trial_id: int, progress: float) -> None:
        self.search.report_progress(trial_id, progress)

    def report_early_exit(self, trial_id: int, reason: str) -> None:
        self.search.report_early_exit(trial_id, reason)

    # -- long polls on the event loop ----------------------------------------------------------
    def add_change_listener(self, fn: Callable[[int | None], None]) -> None:
        """Call ``fn(experiment_id)`` after every change a long poll may wait for (None: any
        experiment's); from any thread, under the engine's lock: it must be cheap and must not
        call back into the engine."""
        self.state.listeners.append(fn)

    def heartbeat(self, trial_id: int) -> None:
        """The trial's run polled: it is alive (lock-free; see :meth:`EngineState.heartbeat`)."""
        self.state.heartbeat(trial_id)

    def preemption_poll_cap(self, trial_id: int) -> float | None:
        """The longest a preemption poll of this trial may wait (unmanaged runs), else None."""
        return self.runs.unmanaged_poll_s(trial_id)

    def live_experiment_of(self, trial_id: int) -> int | None:
        """The experiment of a trial live in this engine, None if it is not (lock-free)."""
        tr = self.state.trials.get(trial_id)
        return None if tr is None else tr.experiment_id

    def preemption_nowait(self, trial_id: int) -> tuple[bool, str | None] | None:
        """See :meth:`Preemption.nowait`."""
        return self.preemption.nowait(trial_id)

    def searcher_operation_nowait(
        self, trial_id: int
    ) -> tuple[bool, tuple[int | None, bool]] | None:
        """See :meth:`SearchDriver.operation_nowait`."""
        return self.search.operation_nowait(trial_id)

    def live_run(self, trial_id: int, run_id: int) -> int | None:
        """The experiment id of ``trial_id`` while this master runs its run ``run_id`` (the
        run has not ended), else None; lock-free (read on every trial call's token check)."""
        tr = self.state.trials.get(trial_id)
        if tr is None or not tr.running or tr.run_id != run_id:
            return None
        return tr.experiment_id

    # -- searcher ----------------------------------------------------------------------------
    def get_searcher_operation(self, trial_id: int, timeout_s: float) -> tuple[int | None, bool]:
        """Long poll for the trial's current op: (length, False), or (None, True) when done."""
        return self.search.get_operation(trial_id, timeout_s)

    def complete_searcher_operation(self, trial_id: int, length: int, metric: float) -> None:
        self.search.complete_operation(trial_id, length, metric)

    def on_validation_metrics(self, trial_id: int, metrics: dict[str, float], steps: int) -> None:
        """Metrics-only trials: a validation report feeds searchers that use ``time_metric``."""
        self.search.on_validation_metrics(trial_id, metrics, steps)

    def searcher_events(
        self, experiment_id: int, after_id: int, timeout_s: float
    ) -> tuple[list[JSONDict], bool]:
        """Long poll for custom-search events after ``after_id``; (events, search over)."""
        return self.search.custom_events(experiment_id, after_id, timeout_s)

    def post_searcher_actions(
        self, experiment_id: int, actions: list[JSONDict], progress: float | None, ack_id: int = 0
    ) -> None:
        """Carry out actions from a custom-search driver (checked as a whole first)."""
        self.search.post_custom_actions(experiment_id, actions, progress, ack_id)

    # -- preemption --------------------------------------------------------------------------
    def watch_preemption(self, trial_id: int, timeout_s: float) -> bool:
        """Long poll: True as soon as the trial should stop, False at the deadline."""
        return self.watch_preemption_reason(trial_id, timeout_s) is not None

    def watch_preemption_reason(self, trial_id: int, timeout_s: float) -> str | None:
        """Long poll: why the trial should stop (``searcher``, ``pause``, ``cancel``, ``kill``,
        or ``""`` when it no longer runs here) as soon as it should, None at the deadline."""
        return self.preemption.watch(trial_id, timeout_s)

    def ack_preemption(self, trial_id: int) -> None:
        self.preemption.ack(trial_id)

    # -- startup and shutdown ----------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild runtimes of unfinished experiments after a master (re)start, then start
        the liveness watchdog (``max_idle``, unmanaged runs' heartbeats, progress saves)."""
        self.lifecycle.recover()
        threading.Thread(target=self._watchdog, name="trial-liveness", daemon=True).start()

    def _watchdog(self) -> None:
        every = min(1.0, self.runs.unmanaged_timeout_s / 4)
        while not self._stop_watchdog.wait(every):
            try:
                self.runs.check_idle()
                self.runs.check_heartbeats()
                self.search.save_progress()
                if self.state.needs_resync:
                    with self.state.lock:
                        self.state.resync_pending()
            except Exception:
                logger.exception("liveness check failed")
            if self.rm.elastic:  # a cluster's capacity grows without an event of ours
                try:
                    with self.state.lock:
                        self.runs.schedule()
                except Exception:
                    logger.exception("scheduling on new capacity failed")

    def close(self) -> None:
        """Wake every long poll and start no more runs."""
        self._stop_watchdog.set()
        with self.state.lock:
            self.state.closed = True
            self.state.notify(None)
        self.state.deadlines.close()
        self.state.launches.close()
