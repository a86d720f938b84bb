"""Trial runs: allocation, start, exit, restart from the latest checkpoint, kill.

A trial is queued with the resource manager for its gang of slots; when granted, a new run
(``run_id`` counting up from 1) is started in it. The run's exit decides what happens next, by
why the run was asked to stop (see :meth:`TrialRuns.on_exit`). Everything here runs under the
engine lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from determined_sdk import checkpoint_storage
from master_server import exit_reasons
from master_server.domain import TERMINAL_TRIAL_STATES, Experiment, LogLine, Trial
from master_server.domain import ExperimentState as E
from master_server.domain import TrialState as T
from master_server.engine.state import EngineState, ExperimentRuntime, TrialRuntime
from master_server.exit_reasons import how_it_exited as why_exit
from master_server.rm.base import LaunchSpec, LiveRun
from master_server.searcher.base import ExitedReason

if TYPE_CHECKING:
    from master_server.engine.lifecycle import ExperimentLifecycle
    from master_server.engine.preemption import Preemption
    from master_server.engine.search import SearchDriver

logger = logging.getLogger(__name__)

_WAS_RUNNING = (T.RUNNING, T.STOPPING_COMPLETED, T.STOPPING_CANCELED, T.STOPPING_ERROR)


class TrialRuns:
    """Starts trial runs in allocations from the resource manager and handles their exits."""

    lifecycle: ExperimentLifecycle
    search: SearchDriver
    preemption: Preemption

    def __init__(
        self,
        state: EngineState,
        master_address: Callable[[], str],
        *,
        unmanaged_timeout_s: float = 60.0,
    ) -> None:
        self.s = state
        self._master_address = master_address
        #: An unmanaged run with no sign of life for this long is presumed dead (ERROR).
        self.unmanaged_timeout_s = unmanaged_timeout_s

    # -- allocation and start ----------------------------------------------------------------
    def schedule(self) -> None:
        """Start a run for every trial the resource manager now has slots for (inside an
        :meth:`~master_server.engine.state.EngineState.atomic` block: once it is committed,
        so no run is started for a trial whose row a rollback would undo)."""
        if self.s.closed:
            return
        if self.s.in_atomic:
            self.s.after_commit(self.schedule)
            return
        for alloc in self.s.rm.allocate():
            try:
                self._start_run(alloc.trial_id)
            except Exception as e:
                logger.exception("trial %d: launch failed", alloc.trial_id)
                self.s.rm.release(alloc.trial_id)
                self.failed(alloc.trial_id, f"launch failed: {e}")

    def _start_run(self, trial_id: int) -> None:
        tr = self.s.trials[trial_id]
        trial = self.s.store.get_trial(trial_id)
        rt = self.s.exps[trial.experiment_id]
        cfg = rt.config
        run_id = trial.run_id + 1
        trial = self.s.set_trial_state(
            trial_id,
            T.RUNNING,
            run_id=run_id,
            **({} if trial.run_id else {"start_time": time.time()}),
        )
        tr.running, tr.run_id, tr.preempt_reason, tr.early_exit = True, run_id, None, None
        tr.last_activity, tr.idle_killed = time.monotonic(), False
        if run_id > 1:
            # This run starts from the trial's latest checkpoint (or from scratch): what
            # earlier runs reported after that step is redone, so it is superseded.
            start = 0
            if trial.latest_checkpoint_uuid:
                start = self.s.store.get_checkpoint(trial.latest_checkpoint_uuid).steps_completed
            self.s.store.supersede_metrics(trial_id, run_id, start)
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
            "slots_per_trial": rt.slots,
            "experiment_config": cfg,
        }
        entry = cfg["entrypoint"]
        # The storage's credentials from the master's environment (never from a config),
        # then the experiment's own variables, which may override them.
        env = checkpoint_storage.credential_env(cfg["checkpoint_storage"], os.environ)
        env |= {
            str(k): str(v)
            for k, v in (cfg.get("environment", {}).get("environment_variables") or {}).items()
        }
        exp_id = trial.experiment_id
        store = self.s.store
        # Started by the launch thread, off the lock (see master_server.engine.launches).
        self.s.launches.submit(
            LaunchSpec(
                trial_id=trial.id,
                experiment_id=exp_id,
                run_id=run_id,
                entrypoint=entry if isinstance(entry, str) else [str(x) for x in entry],
                slots=rt.slots,
                env=env,
                cluster_info=info,
                model_definition=lambda: store.get_model_definition(exp_id),
            )
        )
        self.s.notify(exp_id)

    # -- exits -------------------------------------------------------------------------------
    def launch_failed(self, trial_id: int, run_id: int, why: str) -> None:
        """The start of a run failed (told by the launch thread): handled as an exit whose
        reason is ``why`` (a restart while restarts are left)."""
        self.on_exit(trial_id, run_id, 1, failure=why)

    def on_exit(
        self, trial_id: int, run_id: int, exit_code: int, *, failure: str | None = None
    ) -> None:
        """A run ended (reported by its supervisor or the resource manager); idempotent.

        The trial's new state, what the searcher did on hearing of it (trials created, the
        search log record) and the experiment's end are one transaction
        (:meth:`~master_server.engine.state.EngineState.atomic`): a master killed half way
        has stored none of it, the trial is still RUNNING with this run, and the next master
        handles the exit when the run's supervisor reports it again (it retries while the
        master is unreachable) or when it adopts the run and reads its exit code.
        """
        # A report that comes before this master has recovered its trials waits for them:
        # answered "unknown run, nothing to do", the supervisor would stop reporting.
        self.s.recovered.wait(timeout=120.0)
        with self.s.lock:
            tr = self.s.trials.get(trial_id)
            if tr is None or not tr.running or tr.run_id != run_id:
                return
            tr.running = False
            self.s.rm.release(trial_id)
            rt = self.s.exps.get(tr.experiment_id)
            logger.info(
                "trial %d run %d exited with %d (preempt=%s closed=%s)",
                trial_id,
                run_id,
                exit_code,
                tr.preempt_reason,
                tr.closed,
            )
            with self.s.atomic():
                if rt is None:
                    self._unmanaged_exit(tr, tr.experiment_id, exit_code)
                else:
                    state = self.s.store.get_experiment_state(tr.experiment_id)
                    self._managed_exit(tr, rt, state, exit_code, failure)
                    self.lifecycle.maybe_finish(tr.experiment_id)
                    self.schedule()
                self.s.notify(tr.experiment_id)

    def _unmanaged_exit(
        self, tr: TrialRuntime, experiment_id: int, exit_code: int, why: str | None = None
    ) -> None:
        self.s.set_trial_state(
            tr.trial_id,
            T.COMPLETED if exit_code == 0 else T.ERROR,
            exit_reason=why or ("exited normally" if exit_code == 0 else why_exit(exit_code)),
        )
        self.s.trials.pop(tr.trial_id, None)
        live = self.s.store.list_trials(experiment_id, states=[T.RUNNING, T.QUEUED])[1]
        if live == 0:
            self.s.set_exp_state(
                experiment_id, E.COMPLETED if exit_code == 0 else E.ERROR, "finish"
            )

    def _managed_exit(
        self,
        tr: TrialRuntime,
        rt: ExperimentRuntime,
        exp_state: E,
        exit_code: int,
        failure: str | None = None,
    ) -> None:
        trial_id, reason = tr.trial_id, tr.preempt_reason
        restarts = self.s.store.get_trial(trial_id).restarts
        # The searcher decides before the first write of the transaction: on SQLite the write
        # lock is taken at the first write, so a slow choice (Optuna's TPE) does not hold it.
        if reason in ("cancel", "kill") or exp_state in (E.STOPPING_CANCELED, E.CANCELED):
            event = None
            if reason == "kill" and exp_state not in (E.STOPPING_CANCELED, E.CANCELED):
                event = rt.searcher.on_trial_exited_early(tr.request_id, ExitedReason.USER_CANCELED)
            self.s.set_trial_state(trial_id, T.CANCELED, exit_reason=exit_reasons.canceled(reason))
            self.s.trials.pop(trial_id, None)
            if event is not None:
                self.search.event(rt, event)
        elif tr.closed and (exit_code == 0 or reason == "searcher"):
            done = tr.current_op() is None  # it trained as far as it was asked to
            actions = rt.searcher.on_trial_exited(tr.request_id)
            self.s.set_trial_state(
                trial_id,
                T.COMPLETED,
                exit_reason=exit_reasons.finished(restarts)
                if done
                else exit_reasons.stopped_by_searcher(restarts),
            )
            self.s.trials.pop(trial_id, None)
            self.search.event(rt, actions)
        elif reason == "pause":
            if exp_state == E.ACTIVE:  # re-activated while it was stopping
                self.s.set_trial_state(trial_id, T.QUEUED)
                self.s.rm.request(trial_id, rt.slots, rt.pool)
            else:
                self.s.set_trial_state(trial_id, T.PAUSED, exit_reason=exit_reasons.PAUSED)
        elif exit_code == 0:
            if tr.early_exit is not None:
                why = (
                    ExitedReason.INVALID_HP
                    if tr.early_exit == "INVALID_HP"
                    else ExitedReason.ERRORED
                )
                actions = rt.searcher.on_trial_exited_early(tr.request_id, why)
                self.s.set_trial_state(
                    trial_id, T.COMPLETED, exit_reason=exit_reasons.early_exit(tr.early_exit)
                )
                self.s.trials.pop(trial_id, None)
                self.search.event(rt, actions)
            else:
                tr.closed = True
                actions = rt.searcher.on_trial_exited(tr.request_id)
                self.s.set_trial_state(
                    trial_id, T.COMPLETED, exit_reason=exit_reasons.finished(restarts)
                )
                self.s.trials.pop(trial_id, None)
                self.search.event(rt, actions)
        elif tr.idle_killed:
            self.failed(trial_id, f"no progress for {rt.config.get('max_idle')} s (max_idle)")
        else:
            self.failed(trial_id, failure or why_exit(exit_code))

    def failed(self, trial_id: int, why: str) -> None:
        """A run failed: restart from the latest checkpoint while restarts are left, else ERROR
        (the state and the searcher's event in one transaction)."""
        with self.s.atomic():
            self._failed(trial_id, why)

    def _failed(self, trial_id: int, why: str) -> None:
        tr = self.s.trials[trial_id]
        rt = self.s.exps[tr.experiment_id]
        trial = self.s.store.get_trial(trial_id)
        max_restarts = int(rt.config.get("max_restarts", 5))
        exp_state = self.s.store.get_experiment_state(tr.experiment_id)
        if trial.restarts < max_restarts and exp_state == E.ACTIVE:
            logger.warning(
                "trial %d failed (%s); restart %d of %d from its latest checkpoint",
                trial_id,
                why,
                trial.restarts + 1,
                max_restarts,
            )
            self.s.set_trial_state(
                trial_id,
                T.QUEUED,
                restarts=trial.restarts + 1,
                exit_reason=f"{why}; restarting from the latest checkpoint "
                f"(restart {trial.restarts + 1} of {max_restarts})",
            )
            self.s.rm.request(trial_id, rt.slots, rt.pool)
        elif exp_state == E.PAUSED:
            self.s.set_trial_state(trial_id, T.PAUSED, exit_reason=why)
        else:
            logger.error("trial %d failed (%s) after %d restarts", trial_id, why, trial.restarts)
            left = (
                f"no restarts left, {trial.restarts} used"
                if max_restarts
                else "no restarts allowed (max_restarts: 0)"
            )
            actions = rt.searcher.on_trial_exited_early(tr.request_id, ExitedReason.ERRORED)
            self.s.set_trial_state(trial_id, T.ERROR, exit_reason=f"{why}; {left}")
            self.s.trials.pop(trial_id, None)
            self.search.event(rt, actions)

    # -- liveness ---------------------------------------------------------------------------
    def check_idle(self) -> None:
        """Kill runs of trials with ``max_idle`` that reported nothing for that long; their
        exit restarts them from their latest checkpoint, with the reason in their logs."""
        now = time.monotonic()
        with self.s.lock:
            for tr in list(self.s.trials.values()):
                rt = self.s.exps.get(tr.experiment_id)
                if rt is None or not tr.running or tr.idle_killed or tr.preempt_reason:
                    continue
                max_idle = rt.config.get("max_idle")
                if not max_idle or now - tr.last_activity < float(max_idle):
                    continue
                why = (
                    f"trial {tr.trial_id} run {tr.run_id}: no progress reported for "
                    f"{float(max_idle):g} s (max_idle); killing it to restart from its latest "
                    "checkpoint"
                )
                logger.warning("%s", why)
                self._log_error(tr, why)
                tr.idle_killed = True
                self.s.launches.kill(tr.trial_id, tr.run_id)

    def _log_error(self, tr: TrialRuntime, why: str) -> None:
        """Put why the master ended or killed a run in the trial's logs, as an error line."""
        line = LogLine(
            trial_id=tr.trial_id,
            timestamp=time.time(),
            message=why,
            stream="stderr",
            level="ERROR",
            run_id=tr.run_id,
        )
        self.s.store.add_logs([line])

    def unmanaged_poll_s(self, trial_id: int) -> float | None:
        """How long a preemption poll of an unmanaged run may wait at most (its polls are its
        heartbeat: a third of the timeout keeps two beats inside it); None for other trials
        (lock-free: called on the event loop)."""
        tr = self.s.trials.get(trial_id)
        if tr is None or tr.experiment_id in self.s.exps:
            return None
        return self.unmanaged_timeout_s / 3

    def check_heartbeats(self) -> None:
        """End unmanaged runs (scripts run by hand; no supervisor watches them) that showed
        no sign of life (``core_api`` polls preemption from a background thread, reports
        count too) for :attr:`unmanaged_timeout_s`: ERROR, with the reason in the trial's
        logs and exit reason."""
        now = time.monotonic()
        limit = self.unmanaged_timeout_s
        with self.s.lock:
            for tr in list(self.s.trials.values()):
                if tr.experiment_id in self.s.exps or not tr.running:
                    continue
                silent = now - tr.last_heartbeat
                if silent < limit:
                    continue
                why = (
                    f"no heartbeat for {silent:.0f} s (unmanaged run; timeout {limit:g} s): "
                    "the process running it is presumed dead"
                )
                logger.warning("trial %d run %d: %s", tr.trial_id, tr.run_id, why)
                with self.s.atomic():
                    self._log_error(tr, why)
                    tr.running = False
                    self._unmanaged_exit(tr, tr.experiment_id, 1, why)
                    self.s.notify(tr.experiment_id)

    # -- kill ---------------------------------------------------------------------------------
    def kill(self, trial_id: int) -> Trial:
        """Kill a trial now. Killing a trial that already ended changes nothing."""
        with self.s.lock:
            trial = self.s.store.get_trial(trial_id)
            tr = self.s.trials.get(trial_id)
            if trial.state in TERMINAL_TRIAL_STATES or tr is None:
                return trial
            rt = self.s.exps.get(trial.experiment_id)
            if tr.running and rt is not None:
                self.preemption.preempt(tr, "kill")
            else:
                self._kill_waiting(tr, trial, rt)
            self.s.notify(trial.experiment_id)
            return self.s.store.get_trial(trial_id)

    def _kill_waiting(self, tr: TrialRuntime, trial: Trial, rt: ExperimentRuntime | None) -> None:
        """Cancel a trial that has no run (its state and the searcher's event: one
        transaction)."""
        trial_id = trial.id
        with self.s.atomic():
            actions = (
                rt.searcher.on_trial_exited_early(tr.request_id, ExitedReason.USER_CANCELED)
                if rt is not None
                else None
            )
            self.s.rm.withdraw(trial_id)
            self.s.set_trial_state(trial_id, T.CANCELED)
            self.s.trials.pop(trial_id, None)
            if rt is not None and actions is not None:
                self.search.event(rt, actions)
            else:
                self.lifecycle.maybe_finish(trial.experiment_id)

    # -- recovery ----------------------------------------------------------------------------
    def recover(
        self,
        rt: ExperimentRuntime,
        exp: Experiment,
        saved: dict[str, dict[str, object]],
        live: dict[int, LiveRun],
        own: dict[int, TrialRuntime] | None = None,
    ) -> set[int]:
        """Rebuild the runtimes of ``exp``'s unfinished trials after a master (re)start.

        A trial that was running keeps running when its run is still alive and the resource
        manager verifies it (the run is adopted: same run id, no work lost). Otherwise it is
        requeued and starts again from its latest checkpoint (not counted as a restart).
        ``own`` holds the runtimes of runs this master is running (a rebuild after a rolled
        back write): those keep running as they are. Returns the ids of the trials whose runs
        were adopted.
        """
        adopted: set[int] = set()
        trials, _ = self.s.store.list_trials(exp.id)
        for t in trials:
            if t.state in TERMINAL_TRIAL_STATES:
                continue
            s = saved.get(t.request_id, {})
            ops = s.get("ops", [])
            tr = TrialRuntime(
                t.id,
                exp.id,
                t.request_id,
                ops=[int(x) for x in ops] if isinstance(ops, list) else [],
                completed_length=int(str(s.get("completed_length", 0))),
                closed=bool(s.get("closed", False)),
            )
            rt.trials[t.request_id] = tr
            self.s.trials[t.id] = tr
            mine = (own or {}).get(t.id)
            if t.state in _WAS_RUNNING and mine is not None and mine.run_id == t.run_id:
                tr.running, tr.run_id = True, t.run_id
                tr.preempt_reason, tr.early_exit = mine.preempt_reason, mine.early_exit
                tr.last_activity, tr.last_heartbeat = mine.last_activity, mine.last_heartbeat
                tr.idle_killed = mine.idle_killed
                continue
            run = live.get(t.id)
            if (
                t.state in _WAS_RUNNING
                and run is not None
                and run.run_id == t.run_id
                and self.s.rm.adopt(run, rt.slots)
            ):
                tr.running, tr.run_id = True, t.run_id
                adopted.add(t.id)
                logger.info("trial %d: adopted its live run %d", t.id, t.run_id)
                # Stop requests were in memory only: ask again.
                if exp.state == E.STOPPING_CANCELED:
                    self.preemption.preempt(tr, "cancel")
                elif exp.state == E.PAUSED:
                    self.preemption.preempt(tr, "pause")
                elif tr.closed:
                    self.preemption.preempt(tr, "searcher")
                continue
            if t.state in _WAS_RUNNING:
                self.s.store.update_trial(t.id, state=T.QUEUED)
                t = self.s.store.get_trial(t.id)
            if exp.state == E.ACTIVE and t.state == T.QUEUED:
                self.s.rm.request(t.id, rt.slots, rt.pool)
            elif exp.state == E.PAUSED and t.state == T.QUEUED:
                self.s.store.update_trial(t.id, state=T.PAUSED)
        return adopted

    def recover_unmanaged(self, exp: Experiment) -> None:
        """Unmanaged trials run outside the master: just remember the running ones."""
        trials, _ = self.s.store.list_trials(exp.id, states=[T.RUNNING])
        for t in trials:
            # Its heartbeat clock starts now: the run gets a whole timeout to reach this master.
            self.s.trials[t.id] = TrialRuntime(
                t.id, exp.id, t.request_id, running=True, run_id=t.run_id
            )
