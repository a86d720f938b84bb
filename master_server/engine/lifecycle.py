"""Experiment lifecycle: create, activate, pause, cancel/kill, archive, move, delete, finish,
and recovery of unfinished experiments after a master (re)start.

Ending states: an experiment ends when its searcher shut down and no trial is live. It is
COMPLETED unless the search failed; a failed search whose every trial was canceled by the user
(killing every remaining trial) ends CANCELED, any other failed search ERROR. Cancel and kill of
an experiment that already ended change nothing.
"""

from __future__ import annotations

import logging
import math
import pathlib
import threading
import time
from typing import TYPE_CHECKING

from determined_sdk import checkpoint_storage
from determined_sdk.errors import FailedPreconditionError, InvalidArgumentError
from determined_sdk.model_dir import check_archive
from master_server import compat
from master_server import config as config_mod
from master_server.containment import StorageRoots
from master_server.domain import (
    TERMINAL_EXPERIMENT_STATES,
    Experiment,
    ExperimentFilter,
    JSONDict,
    NewExperiment,
    RemovalTarget,
    Trial,
)
from master_server.domain import ExperimentState as E
from master_server.domain import TrialState as T
from master_server.engine.jobs import removal_target
from master_server.engine.search_log import full_state
from master_server.engine.state import EngineState, ExperimentRuntime, TrialRuntime
from master_server.rm.base import LiveRun
from master_server.searcher.factory import make_search_method
from master_server.searcher.journal import JournaledSearch

if TYPE_CHECKING:
    from master_server.engine.preemption import Preemption
    from master_server.engine.search import SearchDriver
    from master_server.engine.trials import TrialRuns

logger = logging.getLogger(__name__)

#: How long an action on an experiment waits for its create to register it (the create's row
#: is stored before its runtime exists, so a quick caller can see one without the other).
REGISTER_WAIT_S = 30.0


class ExperimentLifecycle:
    """What users do to whole experiments, and how experiments end."""

    search: SearchDriver
    runs: TrialRuns
    preemption: Preemption

    def __init__(
        self,
        state: EngineState,
        *,
        checkpoint_dir: pathlib.Path,
        max_model_bytes: int,
        storage_roots: StorageRoots,
    ) -> None:
        self.s = state
        self._create_gate = threading.Lock()  # creates write their rows one at a time
        # Signalled when a create registers a runtime. Not EngineState.changed: waking every
        # long poll on every create would cost the event loop a pass over all of them.
        self._registered = threading.Condition(state.lock)
        self.checkpoint_dir = checkpoint_dir
        self.max_model_bytes = max_model_bytes
        self.storage_roots = storage_roots

    # -- creation ----------------------------------------------------------------------------
    def create(
        self,
        config_text: str,
        model_definition: bytes,
        *,
        activate: bool,
        project_id: int,
        warnings: list[str] | None = None,
    ) -> Experiment:
        """Validate and store a new experiment; start its search when ``activate``.

        ``warnings`` (if given) receives what the user should be told about the config (keys
        without effect, slots beyond capacity); each is logged too.
        """
        if not config_text.strip():
            raise InvalidArgumentError("config: must not be empty")
        config = config_mod.validate_experiment_config(config_text)
        check_archive(model_definition, self.max_model_bytes)
        total = self.s.rm.total_slots
        slots = int(config["resources"]["slots_per_trial"])
        told = compat.creation_warnings(config, total, pools=self.s.rm.has_pools)
        for line in told:
            logger.warning("experiment config: %s", line)
        if warnings is not None:
            warnings.extend(told)
        compat.check_warm_start(self.s.store, config)
        searcher_cfg = config["searcher"]
        if searcher_cfg["name"] == "pbt":
            need = int(searcher_cfg["population_size"]) * slots
            if need > total:
                # A PBT round ends only when every member has reported, and members that
                # finished wait for the round while holding their slots.
                raise InvalidArgumentError(
                    f"searcher.population_size: {searcher_cfg['population_size']} members of "
                    f"{slots} slot(s) need {need} slots at once (a PBT round waits for all of "
                    f"them); this master has {total}"
                )
        project_id = self._resolve_project(config, project_id)
        self._fill_checkpoint_storage(config)
        # Build the search method now so a searcher config error fails the create call.
        searcher = make_search_method(config)
        rt = ExperimentRuntime(0, config, JournaledSearch(searcher))
        store = self.s.store
        # The row (config, model code, and a paused experiment's searcher snapshot, in one
        # transaction) is written outside the engine lock: the lock guards the runtimes, and a
        # create must not stall every long poll and trial call while the database writes.
        # Creates still pass one at a time (the gate): the database sees no more concurrent
        # writers than before, and runtimes are registered in id order. Until its runtime is
        # registered nothing in the engine knows the new id; an action that finds the row
        # first waits for it (_await_runtime), and a master that stops in between starts the
        # search on recovery (the row is ACTIVE and not started).
        snapshot = None if activate else full_state(rt)
        with self._create_gate:
            exp = store.create_experiment(
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
                    searcher_state=snapshot,
                )
            )
            rt.experiment_id = exp.id
            if snapshot is not None:
                rt.log.snapshot_stored(snapshot)
            with self.s.lock:
                self.s.exps[exp.id] = rt
                self.s.config_cache[exp.id] = config
                if activate:
                    self.search.start(rt)
                self._registered.notify_all()  # actions waiting for this runtime
        logger.info("experiment %d created (%s)", exp.id, config["searcher"]["name"])
        return exp if not activate else store.get_experiment(exp.id)

    def _await_runtime(self, exp: Experiment) -> Experiment:
        """Wait (lock held) until a create that stored ``exp`` has registered its runtime.

        Returns the experiment as it is then. Only a managed, unfinished experiment has a
        runtime; ``exp`` as given is returned for the others.
        """
        deadline = time.monotonic() + REGISTER_WAIT_S
        while (
            not exp.unmanaged
            and exp.state not in TERMINAL_EXPERIMENT_STATES
            and exp.id not in self.s.exps
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                raise FailedPreconditionError(
                    f"experiment {exp.id} is still being created; try again"
                )
            self._registered.wait(timeout=left)
            exp = self.s.store.get_experiment(exp.id)
        return exp

    def _resolve_project(self, config: JSONDict, project_id: int) -> int:
        store = self.s.store
        if project_id:
            return store.get_project(project_id).id
        ws_name, proj_name = config.get("workspace"), config.get("project")
        if ws_name or proj_name:
            if not (ws_name and proj_name):
                raise InvalidArgumentError("workspace/project: give both or neither")
            ws = store.get_workspace_by_name(str(ws_name))
            return store.get_project_by_name(ws.id, str(proj_name)).id
        return 1

    def _fill_checkpoint_storage(self, config: JSONDict, *, confine: bool = True) -> None:
        """Resolve the storage path; ``confine``: it must lie inside the master's roots.

        Unmanaged runs write their checkpoints themselves, wherever they run; the master only
        records that path and never reads or deletes there unless it is inside a root.
        Object storage (s3, gcs, azure) has no path to confine; its backend package must be
        installed here, since the master deletes and streams checkpoints there.

        Raises:
            InvalidArgumentError: the path is outside the roots, or the backend is missing
                (the message names the field and the package).
        """
        cs = config.setdefault("checkpoint_storage", {})
        if checkpoint_storage.is_remote(cs):
            checkpoint_storage.require_backend(str(cs["type"]))
            return
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
        store = self.s.store
        with self.s.lock:
            if experiment_id:
                exp = store.get_experiment(experiment_id)
                if not exp.unmanaged:
                    raise FailedPreconditionError(
                        f"experiment {experiment_id} is managed by the master; "
                        "unmanaged trials can only join unmanaged experiments"
                    )
                if exp.state in TERMINAL_EXPERIMENT_STATES:
                    exp = self.s.set_exp_state(exp.id, E.ACTIVE, "add a trial to")
            else:
                config = config_mod.validate_experiment_config(
                    config_text or "name: unmanaged", unmanaged=True
                )
                self._fill_checkpoint_storage(config, confine=False)
                exp = store.create_experiment(
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
            trial = store.create_trial(
                exp.id, request_id=f"unmanaged-{n}", hparams=hparams, state=T.RUNNING
            )
            trial = store.update_trial(trial.id, run_id=1, start_time=time.time())
            tr = TrialRuntime(trial.id, exp.id, trial.request_id, running=True, run_id=1)
            self.s.trials[trial.id] = tr
            return store.get_experiment(exp.id), trial

    # -- user actions ----------------------------------------------------------------------
    def activate(self, experiment_id: int) -> Experiment:
        with self.s.lock:
            exp = self._await_runtime(self.s.store.get_experiment(experiment_id))
            if exp.unmanaged:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is unmanaged; it cannot be activated"
                )
            if exp.state == E.ACTIVE:
                return exp
            self.s.set_exp_state(experiment_id, E.ACTIVE, "activate")
            rt = self.s.exps[experiment_id]
            for tr in rt.trials.values():
                if self.s.store.get_trial(tr.trial_id).state == T.PAUSED:
                    self.s.set_trial_state(tr.trial_id, T.QUEUED)
                    self.s.rm.request(tr.trial_id, rt.slots, rt.pool)
            self.search.start(rt)
            self.s.notify(experiment_id)
            return self.s.store.get_experiment(experiment_id)

    def pause(self, experiment_id: int) -> Experiment:
        with self.s.lock:
            exp = self._await_runtime(self.s.store.get_experiment(experiment_id))
            if exp.unmanaged:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is unmanaged; it cannot be paused"
                )
            if exp.state == E.PAUSED:
                return exp
            self.s.set_exp_state(experiment_id, E.PAUSED, "pause")
            for tr in self.s.live_trials_of(experiment_id):
                if tr.running:
                    self.preemption.preempt(tr, "pause")
                elif self.s.rm.withdraw(tr.trial_id):
                    self.s.set_trial_state(tr.trial_id, T.PAUSED)
            self.s.notify(experiment_id)
            return self.s.store.get_experiment(experiment_id)

    def cancel(self, experiment_id: int, *, kill: bool = False) -> Experiment:
        """Cancel (or kill) an experiment; one that already ended is returned unchanged."""
        with self.s.lock:
            exp = self._await_runtime(self.s.store.get_experiment(experiment_id))
            if exp.state in TERMINAL_EXPERIMENT_STATES:
                return exp
            if exp.state == E.STOPPING_CANCELED and not kill:
                return exp
            action = "kill" if kill else "cancel"
            if exp.state != E.STOPPING_CANCELED:
                self.s.set_exp_state(experiment_id, E.STOPPING_CANCELED, action)
            for tr in self.s.live_trials_of(experiment_id):
                if tr.running:
                    if exp.unmanaged:
                        tr.preempt_reason = action
                    else:
                        self.preemption.preempt(tr, action)
                else:
                    self.s.rm.withdraw(tr.trial_id)
                    self.s.set_trial_state(tr.trial_id, T.CANCELED)
                    self.s.trials.pop(tr.trial_id, None)
            if exp.unmanaged:
                for tr in self.s.live_trials_of(experiment_id):
                    self.s.set_trial_state(tr.trial_id, T.CANCELED)
                    self.s.trials.pop(tr.trial_id, None)
                self.s.set_exp_state(experiment_id, E.CANCELED, action)
            else:
                self.maybe_finish(experiment_id)
            self.s.notify(experiment_id)
            return self.s.store.get_experiment(experiment_id)

    def set_archived(self, experiment_id: int, archived: bool) -> Experiment:
        with self.s.lock:
            exp = self.s.store.get_experiment(experiment_id)
            if archived and exp.state not in TERMINAL_EXPERIMENT_STATES:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is {exp.state.value}; only a finished experiment "
                    "(COMPLETED, CANCELED or ERROR) can be archived"
                )
            return self.s.store.update_experiment(experiment_id, archived=archived)

    def delete(self, experiment_id: int) -> None:
        """Delete a finished experiment: records, checkpoint files, run directories.

        Every precondition (finished, no checkpoint registered as a model version) is checked
        and the deletion recorded as a pending job before anything is removed; a master that
        stops half way finishes it on its next start.
        """
        store = self.s.store
        with self.s.lock:
            store.get_experiment(experiment_id)
            paths: list[RemovalTarget] = [
                target
                for c in store.list_checkpoints(experiment_id=experiment_id)
                if (target := removal_target(c.storage, c.uuid)) is not None
            ]
            trials, _ = store.list_trials(experiment_id)
            for t in trials:
                paths.extend(str(p) for p in self.s.rm.trial_paths(t.id))
            tensorboard = tensorboard_root(self.s.experiment_config(experiment_id))
            if tensorboard is not None:
                paths.extend(
                    str(d)
                    for d in (tensorboard / f"trial-{t.id}" for t in trials)
                    if self.storage_roots.contains(d)
                )
            paths.extend(str(p) for p in self.s.rm.experiment_paths(experiment_id))
            job = store.begin_experiment_deletion(experiment_id, paths)
            self.s.exps.pop(experiment_id, None)
            self.s.config_cache.pop(experiment_id, None)
        self.s.jobs.run_now(job)

    def move(self, experiment_id: int, project_id: int) -> Experiment:
        self.s.store.get_project(project_id)
        return self.s.store.update_experiment(experiment_id, project_id=project_id)

    # -- reads -------------------------------------------------------------------------------
    def best_searcher_validation(self, experiment_id: int) -> float | None:
        cfg = self.s.experiment_config(experiment_id)
        metric = cfg["searcher"].get("metric")
        smaller = bool(cfg["searcher"].get("smaller_is_better", True))
        best: float | None = None
        trials, _ = self.s.store.list_trials(experiment_id)
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
        cfg = self.s.experiment_config(trial.experiment_id)
        metric = cfg["searcher"].get("metric")
        s = trial.summary_metrics.get("validation_metrics", {}).get(metric)
        if not s:
            return None
        v = s.get("min" if cfg["searcher"].get("smaller_is_better", True) else "max")
        return float(v) if isinstance(v, int | float) else None

    # -- ending --------------------------------------------------------------------------------
    def maybe_finish(self, experiment_id: int) -> None:
        """End the experiment if nothing is left to do (call with the lock held); its end
        state and its search's last record are one transaction."""
        with self.s.atomic():
            self._maybe_finish(experiment_id)

    def _maybe_finish(self, experiment_id: int) -> None:
        store = self.s.store
        rt = self.s.exps.get(experiment_id)
        if rt is None:
            return
        state = store.get_experiment_state(experiment_id)
        if state in TERMINAL_EXPERIMENT_STATES:
            return
        live = self.s.live_trials_of(experiment_id)
        if state == E.STOPPING_CANCELED:
            if not any(t.running for t in live):
                for t in live:
                    self.s.set_trial_state(t.trial_id, T.CANCELED)
                    self.s.rm.withdraw(t.trial_id)
                    self.s.trials.pop(t.trial_id, None)
                self.s.set_exp_state(experiment_id, E.CANCELED, "cancel")
            return
        if rt.shutdown is None or live:
            return
        # A paused experiment whose search is done completes too.
        if rt.shutdown.failure and self._all_trials_canceled(experiment_id):
            self.s.set_exp_state(experiment_id, E.CANCELED, "finish")
            logger.info("experiment %d canceled (every trial was killed)", experiment_id)
        elif rt.shutdown.failure:
            self.s.set_exp_state(experiment_id, E.ERROR, "finish")
            store.update_experiment(experiment_id, error=rt.shutdown.reason or "search failed")
            logger.info("experiment %d failed", experiment_id)
        else:
            self.s.set_exp_state(experiment_id, E.COMPLETED, "finish")
            logger.info("experiment %d completed", experiment_id)
        self.search.save(rt)

    def _all_trials_canceled(self, experiment_id: int) -> bool:
        trials, n = self.s.store.list_trials(experiment_id)
        return n > 0 and all(t.state == T.CANCELED for t in trials)

    # -- startup -------------------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild runtimes of unfinished experiments after a master (re)start.

        Live runs of a previous master are adopted when their trial still expects them;
        the others (unverifiable, or of trials that ended meanwhile) are killed.
        """
        with self.s.lock:
            try:
                self._recover()
            finally:
                self.s.recovered.set()

    def _recover(self) -> None:
        live = {r.trial_id: r for r in self.s.rm.live_runs()}
        adopted: set[int] = set()
        exps, _ = self.s.store.list_experiments(_unfinished_filter())
        for exp in sorted(exps, key=lambda e: e.id):
            if exp.unmanaged:
                self.runs.recover_unmanaged(exp)
                continue
            try:
                adopted |= self._recover_experiment(exp, live)
            except Exception as e:
                logger.exception("experiment %d: could not recover its search", exp.id)
                self.s.store.update_experiment(
                    exp.id, state=E.ERROR, error=f"recovery failed: {e}", end_time=time.time()
                )
        stale = [r for r in live.values() if r.trial_id not in adopted]
        for r in stale:
            self.s.rm.discard(r)
        if stale:
            logger.warning(
                "killed %d runs a previous master left that no trial expects", len(stale)
            )
        if adopted:
            logger.info("adopted %d live runs", len(adopted))
        self.runs.schedule()

    def _recover_experiment(
        self,
        exp: Experiment,
        live: dict[int, LiveRun],
        own: dict[int, TrialRuntime] | None = None,
    ) -> set[int]:
        rt = ExperimentRuntime(exp.id, exp.config, JournaledSearch(make_search_method(exp.config)))
        rt.progress_floor = exp.progress
        self.s.exps[exp.id] = rt
        self.s.config_cache[exp.id] = exp.config
        saved = self.search.restore(rt)
        adopted = self.runs.recover(rt, exp, saved, live, own)
        if exp.state == E.ACTIVE and not rt.started:
            self.search.start(rt)
        else:
            self.maybe_finish(exp.id)
        return adopted

    def resync(self, experiment_id: int) -> None:
        """Rebuild one experiment's runtime from the database (call with the lock held).

        After a transaction of the engine is rolled back (the database refused a write), the
        engine's memory is ahead of what is stored: a trial it ended is still RUNNING there,
        trials the searcher created do not exist, the searcher's decision is not in its log.
        This drops that memory and rebuilds it the way a restart does: the search from its
        snapshot and log, the trials from their rows. Runs this master is running keep running
        (same run id); a trial stored as running whose run has ended starts again from its
        latest checkpoint.
        """
        old = self.s.exps.pop(experiment_id, None)
        known = {t.trial_id: t for t in self.s.trials.values() if t.experiment_id == experiment_id}
        if old is not None:
            known |= {t.trial_id: t for t in old.trials.values()}
        own = {tid: t for tid, t in known.items() if t.running}
        for tid, t in known.items():
            self.s.trials.pop(tid, None)
            if not t.running:
                self.s.rm.withdraw(tid)  # queued in memory, maybe for a row that was undone
        exp = self.s.store.get_experiment(experiment_id)
        logger.warning(
            "experiment %d: an event failed and its writes were rolled back; rebuilding its "
            "state from the database (%d running trials keep running)",
            experiment_id,
            len(own),
        )
        if exp.state in TERMINAL_EXPERIMENT_STATES:
            return
        if exp.unmanaged:
            self.runs.recover_unmanaged(exp)
            return
        self._recover_experiment(exp, {}, own)
        self.runs.schedule()


def tensorboard_root(config: JSONDict) -> pathlib.Path | None:
    """Where the trials of an experiment with this (normalized) config keep their TensorBoard
    files: ``<checkpoint storage>/tensorboard``, holding ``trial-<id>`` directories (the
    layout of ``core_api``'s ``get_tensorboard_path()``); None for storage the master cannot
    reach."""
    storage = config.get("checkpoint_storage") or {}
    path = storage.get("path")
    if storage.get("type", "shared_fs") not in ("shared_fs", "directory") or not path:
        return None
    return pathlib.Path(str(path)).expanduser() / "tensorboard"


def _unfinished_filter() -> ExperimentFilter:
    return ExperimentFilter(
        states=(E.ACTIVE, E.PAUSED, E.STOPPING_COMPLETED, E.STOPPING_CANCELED, E.STOPPING_ERROR),
        archived=None,
    )
