"""The experiment service: experiments, their searchers, and the lives of their trials.

One lock guards the whole state machine (experiment states, trial runtimes, the searcher of each
experiment and the scheduler). Metric ingestion does not take it: metrics go straight to the
store, and only validation reports of experiments whose searcher reads them (``time_metric``
style) enter the lock. Long polls (searcher operations, preemption) wait on a condition of that
lock and return at a deadline.

Searcher state: after every event the experiment's searcher snapshot *and* the trial runtimes
(operations handed out, lengths completed, which trials the searcher closed) are saved together,
so a restarted master continues each search where it was.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from determined_sdk.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
)
from determined_sdk.model_dir import check_archive
from master_server import config as config_mod
from master_server.containment import StorageRoots
from master_server.domain import (
    TERMINAL_EXPERIMENT_STATES,
    TERMINAL_TRIAL_STATES,
    Experiment,
    ExperimentFilter,
    ExperimentState,
    JSONDict,
    NewExperiment,
    Trial,
    TrialState,
)
from master_server.launcher import LaunchSpec, LocalLauncher
from master_server.scheduler import Scheduler
from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    SearchMethod,
    Shutdown,
    Stop,
    ValidateAfter,
)
from master_server.searcher.custom import CustomSearchMethod
from master_server.searcher.factory import make_search_method, searcher_length_unit
from master_server.statemachine import check_experiment_transition, check_trial_transition
from master_server.store.base import Store

logger = logging.getLogger(__name__)

E = ExperimentState
T = TrialState


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

    def current_op(self) -> int | None:
        return next((length for length in self.ops if length > self.completed_length), None)

    def to_json(self) -> JSONDict:
        return {
            "trial_id": self.trial_id,
            "ops": self.ops,
            "completed_length": self.completed_length,
            "closed": self.closed,
        }


@dataclass
class ExperimentRuntime:
    experiment_id: int
    config: JSONDict
    searcher: SearchMethod
    started: bool = False
    shutdown: Shutdown | None = None
    trials: dict[str, TrialRuntime] = field(default_factory=dict)  # by request id

    @property
    def smaller_is_better(self) -> bool:
        return bool(self.config["searcher"].get("smaller_is_better", True))


class ExperimentService:
    """Creates experiments, drives their searchers, schedules and supervises their trials."""

    def __init__(
        self,
        store: Store,
        launcher: LocalLauncher,
        scheduler: Scheduler,
        *,
        data_dir: pathlib.Path,
        checkpoint_dir: pathlib.Path,
        master_address: Callable[[], str],
        max_model_bytes: int = 64 * 2**20,
        preempt_grace_s: float = 30.0,
        storage_roots: StorageRoots | None = None,
    ) -> None:
        self.store = store
        self.storage_roots = storage_roots or StorageRoots([checkpoint_dir])
        self.launcher = launcher
        self.scheduler = scheduler
        self.data_dir = data_dir
        self.checkpoint_dir = checkpoint_dir
        self.max_model_bytes = max_model_bytes
        self.preempt_grace_s = preempt_grace_s
        self._master_address = master_address
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._exps: dict[int, ExperimentRuntime] = {}
        self._trials: dict[int, TrialRuntime] = {}  # by trial id
        self._config_cache: dict[int, JSONDict] = {}
        self._closed = False
        # Called (on a background thread) with an experiment id when it reaches a final state.
        self.on_experiment_finished: Callable[[int], None] | None = None

    # -- helpers -----------------------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.notify_all()

    def experiment_config(self, experiment_id: int) -> JSONDict:
        cfg = self._config_cache.get(experiment_id)
        if cfg is None:
            cfg = self.store.get_experiment(experiment_id).config
            self._config_cache[experiment_id] = cfg
        return cfg

    def _save_searcher(self, rt: ExperimentRuntime) -> None:
        self.store.save_searcher_state(
            rt.experiment_id,
            {
                "method": rt.searcher.snapshot(),
                "started": rt.started,
                "shutdown": None
                if rt.shutdown is None
                else {"failure": rt.shutdown.failure, "reason": rt.shutdown.reason},
                "trials": {rid: t.to_json() for rid, t in rt.trials.items()},
            },
        )
        progress = 1.0 if rt.shutdown is not None else rt.searcher.progress()
        self.store.update_experiment(rt.experiment_id, progress=min(1.0, max(0.0, progress)))

    def _set_trial_state(self, trial_id: int, state: TrialState, **fields: Any) -> Trial:
        cur = self.store.get_trial(trial_id)
        check_trial_transition(trial_id, cur.state, state)
        if state in TERMINAL_TRIAL_STATES:
            fields.setdefault("end_time", time.time())
        return self.store.update_trial(trial_id, state=state, **fields)

    def _set_exp_state(self, experiment_id: int, state: ExperimentState, action: str) -> Experiment:
        cur = self.store.get_experiment(experiment_id)
        check_experiment_transition(experiment_id, cur.state, state, action)
        kw: dict[str, Any] = {"state": state}
        if state in TERMINAL_EXPERIMENT_STATES:
            kw["end_time"] = time.time()
        exp = self.store.update_experiment(experiment_id, **kw)
        hook = self.on_experiment_finished
        if state in TERMINAL_EXPERIMENT_STATES and hook is not None and not exp.unmanaged:
            threading.Thread(
                target=_run_hook,
                args=(hook, experiment_id),
                name="experiment-finished",
                daemon=True,
            ).start()
        return exp

    # -- creation ----------------------------------------------------------------------------
    def create_experiment(
        self, config_text: str, model_definition: bytes, *, activate: bool, project_id: int
    ) -> Experiment:
        """Validate and store a new experiment; start its search when ``activate``."""
        if not config_text.strip():
            raise InvalidArgumentError("config: must not be empty")
        config = config_mod.validate_experiment_config(config_text)
        check_archive(model_definition, self.max_model_bytes)
        slots = int(config["resources"]["slots_per_trial"])
        if slots > self.scheduler.total_slots:
            raise InvalidArgumentError(
                f"resources.slots_per_trial: {slots} is more than this master's "
                f"{self.scheduler.total_slots} slots"
            )
        searcher_cfg = config["searcher"]
        if searcher_cfg["name"] == "pbt":
            need = int(searcher_cfg["population_size"]) * slots
            if need > self.scheduler.total_slots:
                # A PBT round ends only when every member has reported, and members that
                # finished wait for the round while holding their slots.
                raise InvalidArgumentError(
                    f"searcher.population_size: {searcher_cfg['population_size']} members of "
                    f"{slots} slot(s) need {need} slots at once (a PBT round waits for all of "
                    f"them); this master has {self.scheduler.total_slots}"
                )
        project_id = self._resolve_project(config, project_id)
        self._fill_checkpoint_storage(config)
        # Build the search method now so a searcher config error fails the create call.
        searcher = make_search_method(config)
        with self._lock:
            exp = self.store.create_experiment(
                NewExperiment(
                    name=str(config.get("name") or "Experiment"),
                    description=str(config.get("description") or ""),
                    labels=tuple(config.get("labels") or ()),
                    config=config,
                    original_config=config_text,
                    project_id=project_id,
                    searcher_name=str(config["searcher"]["name"]),
                    state=E.ACTIVE if activate else E.PAUSED,
                    model_definition=model_definition,
                )
            )
            rt = ExperimentRuntime(exp.id, config, searcher)
            self._exps[exp.id] = rt
            self._config_cache[exp.id] = config
            if activate:
                self._start_search(rt)
            else:
                self._save_searcher(rt)
            logger.info("experiment %d created (%s)", exp.id, rt.config["searcher"]["name"])
            return self.store.get_experiment(exp.id)

    def _resolve_project(self, config: JSONDict, project_id: int) -> int:
        if project_id:
            return self.store.get_project(project_id).id
        ws_name, proj_name = config.get("workspace"), config.get("project")
        if ws_name or proj_name:
            if not (ws_name and proj_name):
                raise InvalidArgumentError("workspace/project: give both or neither")
            ws = self.store.get_workspace_by_name(str(ws_name))
            return self.store.get_project_by_name(ws.id, str(proj_name)).id
        return 1

    def _fill_checkpoint_storage(self, config: JSONDict, *, confine: bool = True) -> None:
        """Resolve the storage path; ``confine``: it must lie inside the master's roots.

        Unmanaged runs write their checkpoints themselves, wherever they run; the master only
        records that path and never reads or deletes there unless it is inside a root.
        """
        cs = config.setdefault("checkpoint_storage", {})
        path = cs.get("host_path") or cs.get("storage_path") or cs.get("path")
        cs["type"] = "shared_fs"
        field = "checkpoint_storage." + next(
            (k for k in ("host_path", "storage_path", "path") if cs.get(k)), "path"
        )
        resolved = str(pathlib.Path(path).resolve()) if path else str(self.checkpoint_dir)
        cs["path"] = self.storage_roots.check_storage_path(resolved, field) if confine else resolved

    def create_unmanaged_trial(
        self, config_text: str, hparams: JSONDict, experiment_id: int, project_id: int
    ) -> tuple[Experiment, Trial]:
        """Register a trial that runs outside the master (a script or notebook)."""
        with self._lock:
            if experiment_id:
                exp = self.store.get_experiment(experiment_id)
                if not exp.unmanaged:
                    raise FailedPreconditionError(
                        f"experiment {experiment_id} is managed by the master; "
                        "unmanaged trials can only join unmanaged experiments"
                    )
                if exp.state in TERMINAL_EXPERIMENT_STATES:
                    exp = self._set_exp_state(exp.id, E.ACTIVE, "add a trial to")
            else:
                config = config_mod.validate_experiment_config(
                    config_text or "name: unmanaged", unmanaged=True
                )
                self._fill_checkpoint_storage(config, confine=False)
                exp = self.store.create_experiment(
                    NewExperiment(
                        name=str(config.get("name") or "unmanaged"),
                        description=str(config.get("description") or ""),
                        labels=tuple(config.get("labels") or ()),
                        config=config,
                        original_config=config_text,
                        project_id=self._resolve_project(config, project_id),
                        searcher_name="unmanaged",
                        state=E.ACTIVE,
                        unmanaged=True,
                    )
                )
            n = exp.num_trials + 1
            trial = self.store.create_trial(
                exp.id, request_id=f"unmanaged-{n}", hparams=hparams, state=T.RUNNING
            )
            trial = self.store.update_trial(trial.id, run_id=1, start_time=time.time())
            tr = TrialRuntime(trial.id, exp.id, trial.request_id, running=True, run_id=1)
            self._trials[trial.id] = tr
            return self.store.get_experiment(exp.id), trial

    # -- the search --------------------------------------------------------------------------
    def _start_search(self, rt: ExperimentRuntime) -> None:
        if not rt.started:
            rt.started = True
            self._apply(rt, rt.searcher.initial_operations())
        self._save_searcher(rt)
        self._schedule()

    def _apply(self, rt: ExperimentRuntime, actions: list[Action]) -> None:
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
            elif isinstance(action, Stop):
                tr = rt.trials.get(action.request_id)
                if tr is not None and not tr.closed:
                    tr.closed = True
                    self._close_trial(rt, tr)
            elif isinstance(action, Shutdown) and rt.shutdown is None:
                rt.shutdown = action
                for tr in rt.trials.values():
                    if not tr.closed:
                        tr.closed = True
                        self._close_trial(rt, tr)
        self._notify()

    def _create_trial(self, rt: ExperimentRuntime, action: Create) -> list[Action]:
        warm = None
        if action.checkpoint_from is not None:
            parent = rt.trials.get(action.checkpoint_from)
            if parent is not None:
                warm = self.store.get_trial(parent.trial_id).latest_checkpoint_uuid
        trial = self.store.create_trial(
            rt.experiment_id,
            request_id=action.request_id,
            hparams=action.hparams,
            warm_start_checkpoint_uuid=warm,
        )
        tr = TrialRuntime(trial.id, rt.experiment_id, action.request_id)
        rt.trials[action.request_id] = tr
        self._trials[trial.id] = tr
        exp = self.store.get_experiment(rt.experiment_id)
        if exp.state == E.ACTIVE:
            self.scheduler.enqueue(trial.id, int(rt.config["resources"]["slots_per_trial"]))
        else:
            self._set_trial_state(trial.id, T.PAUSED)
        return rt.searcher.on_trial_created(action.request_id)

    def _close_trial(self, rt: ExperimentRuntime, tr: TrialRuntime) -> None:
        """The searcher is done with a trial: stop it if it runs, finish it if it waits."""
        if tr.running:
            self._preempt(tr, "searcher")
            return
        trial = self.store.get_trial(tr.trial_id)
        if trial.state in TERMINAL_TRIAL_STATES:
            return
        self.scheduler.dequeue(tr.trial_id)
        self._set_trial_state(tr.trial_id, T.COMPLETED, exit_reason="stopped by the searcher")
        self._trials.pop(tr.trial_id, None)

    def _searcher_event(self, rt: ExperimentRuntime, actions: list[Action]) -> None:
        self._apply(rt, actions)
        self._save_searcher(rt)
        self._maybe_finish(rt.experiment_id)
        self._schedule()

    # -- scheduling --------------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._closed:
            return
        for alloc in self.scheduler.schedule():
            try:
                self._launch(alloc.trial_id)
            except Exception as e:
                logger.exception("trial %d: launch failed", alloc.trial_id)
                self.scheduler.release(alloc.trial_id)
                self._trial_failed(alloc.trial_id, f"launch failed: {e}")

    def _launch(self, trial_id: int) -> None:
        tr = self._trials[trial_id]
        trial = self.store.get_trial(trial_id)
        rt = self._exps[trial.experiment_id]
        cfg = rt.config
        run_id = trial.run_id + 1
        trial = self._set_trial_state(
            trial_id,
            T.RUNNING,
            run_id=run_id,
            **({} if trial.run_id else {"start_time": time.time()}),
        )
        tr.running, tr.run_id, tr.preempt_reason, tr.early_exit = True, run_id, None, None
        latest = trial.latest_checkpoint_uuid or trial.warm_start_checkpoint_uuid
        seed = int(cfg.get("reproducibility", {}).get("experiment_seed") or 0)
        info = {
            "master": self._master_address(),
            "trial_id": trial.id,
            "experiment_id": trial.experiment_id,
            "run_id": run_id,
            "hparams": trial.hparams,
            "latest_checkpoint": latest,
            "checkpoint_storage": cfg["checkpoint_storage"],
            "user_data": cfg.get("data") or {},
            "trial_seed": (seed + trial.id) % 2**31,
            "slots_per_trial": int(cfg["resources"]["slots_per_trial"]),
            "experiment_config": cfg,
        }
        entry = cfg["entrypoint"]
        env = {
            str(k): str(v)
            for k, v in (cfg.get("environment", {}).get("environment_variables") or {}).items()
        }
        exp_id = trial.experiment_id
        self.launcher.launch(
            LaunchSpec(
                trial_id=trial.id,
                experiment_id=exp_id,
                run_id=run_id,
                entrypoint=entry if isinstance(entry, str) else [str(x) for x in entry],
                slots=int(cfg["resources"]["slots_per_trial"]),
                env=env,
                cluster_info=info,
                model_definition=lambda: self.store.get_model_definition(exp_id),
            )
        )
        self._notify()

    # -- trial exits -------------------------------------------------------------------------
    def on_trial_exit(self, trial_id: int, run_id: int, exit_code: int) -> None:
        """A run ended (reported by its supervisor or the launcher's reaper); idempotent."""
        with self._lock:
            tr = self._trials.get(trial_id)
            if tr is None or not tr.running or tr.run_id != run_id:
                return
            tr.running = False
            self.scheduler.release(trial_id)
            rt = self._exps.get(tr.experiment_id)
            exp = self.store.get_experiment(tr.experiment_id)
            logger.info(
                "trial %d run %d exited with %d (preempt=%s closed=%s)",
                trial_id,
                run_id,
                exit_code,
                tr.preempt_reason,
                tr.closed,
            )
            reason = tr.preempt_reason
            if rt is None:  # unmanaged
                state = T.COMPLETED if exit_code == 0 else T.ERROR
                self._set_trial_state(trial_id, state)
                self._trials.pop(trial_id, None)
                live = self.store.list_trials(exp.id, states=[T.RUNNING, T.QUEUED])[1]
                if live == 0:
                    self._set_exp_state(
                        exp.id, E.COMPLETED if exit_code == 0 else E.ERROR, "finish"
                    )
                self._notify()
                return
            if reason in ("cancel", "kill") or exp.state in (E.STOPPING_CANCELED, E.CANCELED):
                self._set_trial_state(trial_id, T.CANCELED)
                self._trials.pop(trial_id, None)
                if reason == "kill" and exp.state not in (E.STOPPING_CANCELED, E.CANCELED):
                    self._searcher_event(
                        rt,
                        rt.searcher.on_trial_exited_early(
                            tr.request_id, ExitedReason.USER_CANCELED
                        ),
                    )
            elif tr.closed and (exit_code == 0 or reason == "searcher"):
                self._set_trial_state(trial_id, T.COMPLETED)
                self._trials.pop(trial_id, None)
                self._searcher_event(rt, rt.searcher.on_trial_exited(tr.request_id))
            elif reason == "pause":
                if exp.state == E.ACTIVE:  # re-activated while it was stopping
                    self._set_trial_state(trial_id, T.QUEUED)
                    self.scheduler.enqueue(trial_id, int(rt.config["resources"]["slots_per_trial"]))
                else:
                    self._set_trial_state(trial_id, T.PAUSED)
            elif exit_code == 0:
                if tr.early_exit is not None:
                    self._set_trial_state(trial_id, T.COMPLETED, exit_reason=tr.early_exit)
                    self._trials.pop(trial_id, None)
                    why = (
                        ExitedReason.INVALID_HP
                        if tr.early_exit == "INVALID_HP"
                        else ExitedReason.ERRORED
                    )
                    self._searcher_event(rt, rt.searcher.on_trial_exited_early(tr.request_id, why))
                else:
                    tr.closed = True
                    self._set_trial_state(trial_id, T.COMPLETED)
                    self._trials.pop(trial_id, None)
                    self._searcher_event(rt, rt.searcher.on_trial_exited(tr.request_id))
            else:
                self._trial_failed(trial_id, f"exit code {exit_code}")
            self._maybe_finish(exp.id)
            self._schedule()
            self._notify()

    def _trial_failed(self, trial_id: int, why: str) -> None:
        tr = self._trials[trial_id]
        rt = self._exps[tr.experiment_id]
        trial = self.store.get_trial(trial_id)
        max_restarts = int(rt.config.get("max_restarts", 5))
        exp = self.store.get_experiment(tr.experiment_id)
        if trial.restarts < max_restarts and exp.state == E.ACTIVE:
            logger.warning(
                "trial %d failed (%s); restart %d of %d from its latest checkpoint",
                trial_id,
                why,
                trial.restarts + 1,
                max_restarts,
            )
            self._set_trial_state(trial_id, T.QUEUED, restarts=trial.restarts + 1, exit_reason=why)
            self.scheduler.enqueue(trial_id, int(rt.config["resources"]["slots_per_trial"]))
        elif exp.state == E.PAUSED:
            self._set_trial_state(trial_id, T.PAUSED, exit_reason=why)
        else:
            logger.error("trial %d failed (%s) after %d restarts", trial_id, why, trial.restarts)
            self._set_trial_state(trial_id, T.ERROR, exit_reason=why)
            self._trials.pop(trial_id, None)
            self._searcher_event(
                rt, rt.searcher.on_trial_exited_early(tr.request_id, ExitedReason.ERRORED)
            )

    def _maybe_finish(self, experiment_id: int) -> None:
        exp = self.store.get_experiment(experiment_id)
        rt = self._exps.get(experiment_id)
        if rt is None or exp.state in TERMINAL_EXPERIMENT_STATES:
            return
        live = [t for t in self._trials.values() if t.experiment_id == experiment_id]
        running = [t for t in live if t.running]
        if exp.state == E.STOPPING_CANCELED:
            if not running:
                for t in live:
                    self._set_trial_state(t.trial_id, T.CANCELED)
                    self.scheduler.dequeue(t.trial_id)
                    self._trials.pop(t.trial_id, None)
                self._set_exp_state(experiment_id, E.CANCELED, "cancel")
            return
        if rt.shutdown is not None and not live:
            failed = rt.shutdown.failure
            # A paused experiment whose search is done completes too.
            self._set_exp_state(experiment_id, E.ERROR if failed else E.COMPLETED, "finish")
            if failed:
                self.store.update_experiment(
                    experiment_id, error=rt.shutdown.reason or "search failed"
                )
            self._save_searcher(rt)
            logger.info("experiment %d %s", experiment_id, "failed" if failed else "completed")

    # -- preemption --------------------------------------------------------------------------
    def _preempt(self, tr: TrialRuntime, reason: str) -> None:
        # A stronger reason replaces a weaker one (kill > cancel > pause/searcher).
        order = {None: 0, "searcher": 1, "pause": 1, "cancel": 2, "kill": 3}
        if order[reason] >= order[tr.preempt_reason]:
            tr.preempt_reason = reason
        self._notify()
        if reason == "kill":
            self.launcher.kill(tr.trial_id)
            return
        run_id = tr.run_id
        timer = threading.Timer(self.preempt_grace_s, self._grace_expired, (tr.trial_id, run_id))
        timer.daemon = True
        timer.start()

    def _grace_expired(self, trial_id: int, run_id: int) -> None:
        with self._lock:
            tr = self._trials.get(trial_id)
            if tr is None or not tr.running or tr.run_id != run_id:
                return
            logger.warning("trial %d did not stop within the grace period; killing it", trial_id)
        self.launcher.signal(trial_id, signal.SIGTERM)
        threading.Timer(10.0, self.launcher.kill, (trial_id,)).start()

    def watch_preemption(self, trial_id: int, timeout_s: float) -> bool:
        """Long poll: True as soon as the trial should stop, False at the deadline."""
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        with self._lock:
            self._require_trial(trial_id)
            while True:
                tr = self._trials.get(trial_id)
                if tr is None or tr.preempt_reason is not None or self._closed:
                    return tr is None or tr.preempt_reason is not None
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    def ack_preemption(self, trial_id: int) -> None:
        """The trial heard the stop request. The outcome of its exit is decided by why it was
        asked to stop (see :meth:`on_trial_exit`), so this only checks the trial exists."""
        with self._lock:
            self._require_trial(trial_id)

    # -- searcher operations (from the trial) ------------------------------------------------
    def get_searcher_operation(self, trial_id: int, timeout_s: float) -> tuple[int | None, bool]:
        """Long poll for the trial's current op: (length, False), or (None, True) when done."""
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        with self._lock:
            self._require_trial(trial_id)
            while True:
                tr = self._trials.get(trial_id)
                if tr is None or tr.closed:
                    return None, True
                rt = self._exps.get(tr.experiment_id)
                if rt is None:  # unmanaged: no searcher
                    return None, True
                op = tr.current_op()
                if op is not None:
                    return op, False
                if (
                    not tr.ops
                    and searcher_length_unit(rt.config) is None
                    and not isinstance(rt.searcher, CustomSearchMethod)
                ):
                    return None, True  # this searcher hands out no lengths (a custom driver may)
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return None, False
                self._changed.wait(left)

    def complete_searcher_operation(self, trial_id: int, length: int, metric: float) -> None:
        with self._lock:
            tr, rt = self._live(trial_id)
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
            self._searcher_event(
                rt, rt.searcher.on_validation_completed(tr.request_id, metric, length)
            )

    def on_validation_metrics(self, trial_id: int, metrics: dict[str, float], steps: int) -> None:
        """Metrics-only trials: a validation report feeds searchers that use ``time_metric``."""
        cfg = self.experiment_config_of_trial(trial_id)
        s = cfg["searcher"]
        time_metric, metric = s.get("time_metric"), s.get("metric")
        if not time_metric or metric not in metrics or time_metric not in metrics:
            return
        with self._lock:
            tr, rt = self._live(trial_id)
            if rt is None or tr.closed:
                return
            value = metrics[time_metric]
            length = int(value) if math.isfinite(value) else 0
            self._searcher_event(
                rt, rt.searcher.on_validation_completed(tr.request_id, metrics[metric], length)
            )

    def experiment_config_of_trial(self, trial_id: int) -> JSONDict:
        tr = self._trials.get(trial_id)
        exp_id = (
            tr.experiment_id if tr is not None else self.store.get_trial(trial_id).experiment_id
        )
        return self.experiment_config(exp_id)

    def report_progress(self, trial_id: int, progress: float) -> None:
        if not (0.0 <= progress <= 1.0) or math.isnan(progress):
            raise InvalidArgumentError(f"progress: must be within [0, 1], got {progress}")
        with self._lock:
            tr, rt = self._live(trial_id)
            self.store.update_trial(trial_id, progress=progress)
            if rt is not None:
                op = tr.current_op()
                if op is not None:
                    rt.searcher.on_trial_progress(tr.request_id, progress * op)
                p = 1.0 if rt.shutdown is not None else rt.searcher.progress()
                self.store.update_experiment(rt.experiment_id, progress=min(1.0, max(0.0, p)))

    def report_early_exit(self, trial_id: int, reason: str) -> None:
        if reason not in ("INVALID_HP", "ERRORED", "USER_CANCELED"):
            raise InvalidArgumentError(
                f"reason: must be INVALID_HP, ERRORED or USER_CANCELED, got {reason!r}"
            )
        with self._lock:
            tr, _ = self._live(trial_id)
            tr.early_exit = reason

    def _require_trial(self, trial_id: int) -> None:
        if trial_id not in self._trials:
            self.store.get_trial(trial_id)  # raises NotFoundError for unknown ids

    def _live(self, trial_id: int) -> tuple[TrialRuntime, ExperimentRuntime | None]:
        tr = self._trials.get(trial_id)
        if tr is None:
            trial = self.store.get_trial(trial_id)
            raise FailedPreconditionError(
                f"trial {trial_id} is {trial.state.value}; it is not running"
            )
        return tr, self._exps.get(tr.experiment_id)

    # -- custom search (the user's driver) -------------------------------------------------
    def _custom(self, experiment_id: int) -> tuple[ExperimentRuntime, CustomSearchMethod]:
        exp = self.store.get_experiment(experiment_id)
        rt = self._exps.get(experiment_id)
        method = rt.searcher if rt is not None else None
        if rt is None or not isinstance(method, CustomSearchMethod):
            raise FailedPreconditionError(
                f"experiment {experiment_id} does not use the custom searcher "
                f"(searcher.name: {exp.searcher_name}); it has no events to read"
            )
        return rt, method

    def searcher_events(
        self, experiment_id: int, after_id: int, timeout_s: float
    ) -> tuple[list[JSONDict], bool]:
        """Long poll for custom-search events after ``after_id``; (events, search over)."""
        if after_id < 0:
            raise InvalidArgumentError(f"after_event_id: must be >= 0, got {after_id}")
        deadline = time.monotonic() + max(0.0, min(timeout_s, 600.0))
        with self._lock:
            _, method = self._custom(experiment_id)
            while True:
                events = method.events_after(after_id)
                over = self.store.get_experiment(experiment_id).state in TERMINAL_EXPERIMENT_STATES
                left = deadline - time.monotonic()
                if events or over or left <= 0 or self._closed:
                    return events, over
                self._changed.wait(left)

    def post_searcher_actions(
        self, experiment_id: int, actions: list[JSONDict], progress: float | None, ack_id: int = 0
    ) -> None:
        """Carry out actions from a custom-search driver (checked as a whole first)."""
        with self._lock:
            rt, method = self._custom(experiment_id)
            exp = self.store.get_experiment(experiment_id)
            if exp.state in TERMINAL_EXPERIMENT_STATES:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is {exp.state.value}; the search is over"
                )
            method.push_actions(actions)
            if ack_id > 0:
                method.events_after(ack_id)
            if progress is not None:
                method.set_progress(progress)
            self._searcher_event(rt, method.pending_actions())

    # -- lifecycle ---------------------------------------------------------------------------
    def activate(self, experiment_id: int) -> Experiment:
        with self._lock:
            exp = self.store.get_experiment(experiment_id)
            if exp.unmanaged:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is unmanaged; it cannot be activated"
                )
            if exp.state == E.ACTIVE:
                return exp
            self._set_exp_state(experiment_id, E.ACTIVE, "activate")
            rt = self._exps[experiment_id]
            slots = int(rt.config["resources"]["slots_per_trial"])
            for tr in rt.trials.values():
                t = self.store.get_trial(tr.trial_id)
                if t.state == T.PAUSED:
                    self._set_trial_state(tr.trial_id, T.QUEUED)
                    self.scheduler.enqueue(tr.trial_id, slots)
            self._start_search(rt)
            self._notify()
            return self.store.get_experiment(experiment_id)

    def pause(self, experiment_id: int) -> Experiment:
        with self._lock:
            exp = self.store.get_experiment(experiment_id)
            if exp.unmanaged:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is unmanaged; it cannot be paused"
                )
            if exp.state == E.PAUSED:
                return exp
            self._set_exp_state(experiment_id, E.PAUSED, "pause")
            for tr in list(self._trials.values()):
                if tr.experiment_id != experiment_id:
                    continue
                if tr.running:
                    self._preempt(tr, "pause")
                elif self.scheduler.dequeue(tr.trial_id):
                    self._set_trial_state(tr.trial_id, T.PAUSED)
            self._notify()
            return self.store.get_experiment(experiment_id)

    def cancel(self, experiment_id: int, *, kill: bool = False) -> Experiment:
        with self._lock:
            exp = self.store.get_experiment(experiment_id)
            if exp.state in (E.CANCELED, E.STOPPING_CANCELED) and not kill:
                return exp
            action = "kill" if kill else "cancel"
            if exp.state != E.STOPPING_CANCELED:
                self._set_exp_state(experiment_id, E.STOPPING_CANCELED, action)
            for tr in list(self._trials.values()):
                if tr.experiment_id != experiment_id:
                    continue
                if tr.running:
                    if exp.unmanaged:
                        tr.preempt_reason = action
                    else:
                        self._preempt(tr, action)
                else:
                    self.scheduler.dequeue(tr.trial_id)
                    self._set_trial_state(tr.trial_id, T.CANCELED)
                    self._trials.pop(tr.trial_id, None)
            if exp.unmanaged:
                for tr in [t for t in self._trials.values() if t.experiment_id == experiment_id]:
                    self._set_trial_state(tr.trial_id, T.CANCELED)
                    self._trials.pop(tr.trial_id, None)
                self._set_exp_state(experiment_id, E.CANCELED, action)
            else:
                self._maybe_finish(experiment_id)
            self._notify()
            return self.store.get_experiment(experiment_id)

    def kill_trial(self, trial_id: int) -> Trial:
        with self._lock:
            trial = self.store.get_trial(trial_id)
            tr = self._trials.get(trial_id)
            if trial.state in TERMINAL_TRIAL_STATES or tr is None:
                raise FailedPreconditionError(
                    f"trial {trial_id} is {trial.state.value}; it cannot be killed"
                )
            rt = self._exps.get(trial.experiment_id)
            if tr.running and rt is not None:
                self._preempt(tr, "kill")
            else:
                self.scheduler.dequeue(trial_id)
                self._set_trial_state(trial_id, T.CANCELED)
                self._trials.pop(trial_id, None)
                if rt is not None:
                    self._searcher_event(
                        rt,
                        rt.searcher.on_trial_exited_early(
                            tr.request_id, ExitedReason.USER_CANCELED
                        ),
                    )
                else:
                    self._maybe_finish(trial.experiment_id)
            self._notify()
            return self.store.get_trial(trial_id)

    def set_archived(self, experiment_id: int, archived: bool) -> Experiment:
        with self._lock:
            exp = self.store.get_experiment(experiment_id)
            if archived and exp.state not in TERMINAL_EXPERIMENT_STATES:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is {exp.state.value}; only a finished experiment "
                    "(COMPLETED, CANCELED or ERROR) can be archived"
                )
            return self.store.update_experiment(experiment_id, archived=archived)

    def delete(self, experiment_id: int) -> None:
        with self._lock:
            exp = self.store.get_experiment(experiment_id)
            if exp.state not in TERMINAL_EXPERIMENT_STATES:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is {exp.state.value}; cancel it before deleting it"
                )
            ckpts = self.store.list_checkpoints(experiment_id=experiment_id)
            for c in ckpts:
                shutil.rmtree(
                    os.path.join(str(c.storage.get("path", "")), c.uuid), ignore_errors=True
                )
            trials, _ = self.store.list_trials(experiment_id)
            for t in trials:
                shutil.rmtree(self.data_dir / "runs" / f"trial-{t.id}", ignore_errors=True)
            shutil.rmtree(self.data_dir / "experiments" / str(experiment_id), ignore_errors=True)
            self.store.delete_experiment(experiment_id)
            self._exps.pop(experiment_id, None)
            self._config_cache.pop(experiment_id, None)

    def move(self, experiment_id: int, project_id: int) -> Experiment:
        self.store.get_project(project_id)
        return self.store.update_experiment(experiment_id, project_id=project_id)

    def best_searcher_validation(self, experiment_id: int) -> float | None:
        cfg = self.experiment_config(experiment_id)
        metric = cfg["searcher"].get("metric")
        smaller = bool(cfg["searcher"].get("smaller_is_better", True))
        best: float | None = None
        trials, _ = self.store.list_trials(experiment_id)
        for t in trials:
            s = t.summary_metrics.get("validation_metrics", {}).get(metric)
            if not s:
                continue
            v = s.get("min" if smaller else "max")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if best is None or (v < best if smaller else v > best):
                best = float(v)
        return best

    def searcher_metric_of(self, trial: Trial) -> float | None:
        cfg = self.experiment_config(trial.experiment_id)
        metric = cfg["searcher"].get("metric")
        s = trial.summary_metrics.get("validation_metrics", {}).get(metric)
        if not s:
            return None
        v = s.get("min" if cfg["searcher"].get("smaller_is_better", True) else "max")
        return float(v) if isinstance(v, int | float) else None

    def free_slots(self) -> int:
        """Slots not held by a running trial."""
        with self._lock:
            return self.scheduler.free_slots

    # -- startup and shutdown ----------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild runtimes of unfinished experiments after a master (re)start."""
        with self._lock:
            exps, _ = self.store.list_experiments(_unfinished_filter())
            for exp in sorted(exps, key=lambda e: e.id):
                if exp.unmanaged:
                    trials, _ = self.store.list_trials(exp.id, states=[T.RUNNING])
                    for t in trials:
                        self._trials[t.id] = TrialRuntime(
                            t.id, exp.id, t.request_id, running=True, run_id=t.run_id
                        )
                    continue
                try:
                    self._recover_experiment(exp)
                except Exception as e:
                    logger.exception("experiment %d: could not recover its search", exp.id)
                    self.store.update_experiment(
                        exp.id, state=E.ERROR, error=f"recovery failed: {e}", end_time=time.time()
                    )
            self._schedule()

    def _recover_experiment(self, exp: Experiment) -> None:
        cfg = exp.config
        searcher = make_search_method(cfg)
        rt = ExperimentRuntime(exp.id, cfg, searcher)
        self._exps[exp.id] = rt
        self._config_cache[exp.id] = cfg
        state = self.store.load_searcher_state(exp.id) or {}
        if state.get("method") is not None:
            searcher.restore(state["method"])
        rt.started = bool(state.get("started"))
        sd = state.get("shutdown")
        rt.shutdown = (
            Shutdown(failure=bool(sd["failure"]), reason=str(sd.get("reason", ""))) if sd else None
        )
        saved = state.get("trials", {})
        slots = int(cfg["resources"]["slots_per_trial"])
        trials, _ = self.store.list_trials(exp.id)
        for t in trials:
            s = saved.get(t.request_id, {})
            if t.state in TERMINAL_TRIAL_STATES:
                continue
            tr = TrialRuntime(
                t.id,
                exp.id,
                t.request_id,
                ops=list(s.get("ops", [])),
                completed_length=int(s.get("completed_length", 0)),
                closed=bool(s.get("closed", False)),
            )
            rt.trials[t.request_id] = tr
            self._trials[t.id] = tr
            if t.state in (T.RUNNING, T.STOPPING_COMPLETED, T.STOPPING_CANCELED, T.STOPPING_ERROR):
                # Its supervisor died with the old master: run it again from its checkpoint.
                self.store.update_trial(t.id, state=T.QUEUED)
                t = self.store.get_trial(t.id)
            if exp.state == E.ACTIVE and t.state == T.QUEUED:
                self.scheduler.enqueue(t.id, slots)
            elif exp.state == E.PAUSED and t.state == T.QUEUED:
                self.store.update_trial(t.id, state=T.PAUSED)
        if exp.state == E.STOPPING_CANCELED:
            self._maybe_finish(exp.id)
        elif exp.state == E.ACTIVE and not rt.started:
            self._start_search(rt)
        else:
            self._maybe_finish(exp.id)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._notify()


def _run_hook(hook: Callable[[int], None], experiment_id: int) -> None:
    try:
        hook(experiment_id)
    except Exception:
        logger.exception("experiment %d: finishing work (checkpoint GC) failed", experiment_id)


def _unfinished_filter() -> ExperimentFilter:
    return ExperimentFilter(
        states=(E.ACTIVE, E.PAUSED, E.STOPPING_COMPLETED, E.STOPPING_CANCELED, E.STOPPING_ERROR),
        archived=None,
    )
