"""A deterministic simulator that plays the experiment service against any SearchMethod.

It carries out the actions a search method returns (Create, ValidateAfter, Stop, Shutdown),
feeds back synthetic metrics from an objective ``f(hparams, length)``, and checks the
contract on every step:

* request ids are unique; ValidateAfter/Stop only name created, not-yet-exited trials;
* ValidateAfter lengths never go backwards for a trial;
* trials created and not exited never exceed ``max_concurrent`` (when given);
* exactly one Shutdown, and nothing but no-ops after it;
* ``progress()`` is in [0, 1], never decreases, and is 1.0 once shut down;
* ``snapshot()`` is JSON-serializable (every event, unless disabled).

Two trial styles: ``"ops"`` (a trial trains to the length of its ValidateAfter, then reports)
and ``"metrics"`` (a trial ignores lengths, reports a validation every ``report_every`` units
with ``length`` = units trained, and exits by itself at ``natural_length``).

Trials are run in a seeded pseudo-random order (``order_seed``), one report at a time. The
whole run is recorded in ``trace`` so two runs can be compared exactly.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    SearchMethod,
    Shutdown,
    Stop,
    ValidateAfter,
)

Objective = Callable[[dict[str, Any], float, str], float]


def quadratic_objective(hparams: dict[str, Any], length: float, rid: str) -> float:
    """``(x - 2)^2`` plus a term that shrinks with training, plus small seeded noise."""
    x = float(hparams.get("x", 0.0))
    noise = random.Random(f"{rid}:{length}").gauss(0.0, 0.01)
    return (x - 2.0) ** 2 + 1.0 / (1.0 + length / 10.0) + noise


@dataclass
class SimTrial:
    rid: str
    hparams: dict[str, Any]
    checkpoint_from: str | None
    trained: float = 0.0
    target: int | None = None
    last_target: int = 0
    stopping: bool = False
    exited: bool = False
    created_notified: bool = False
    reports: list[tuple[float, float]] = field(default_factory=list)
    exit_kind: str = ""


class ContractError(AssertionError):
    """The search method broke the SearchMethod contract."""


class Simulator:
    """Drives a search method to completion (see the module docstring)."""

    def __init__(
        self,
        method: SearchMethod,
        objective: Objective = quadratic_objective,
        *,
        style: str = "ops",
        report_every: float = 1.0,
        natural_length: float = 100.0,
        max_concurrent: int | None = None,
        error_rate: float = 0.0,
        invalid_rate: float = 0.0,
        order_seed: int = 0,
        check_snapshots: bool = True,
        progress_reports: bool = True,
        max_steps: int = 100_000,
    ) -> None:
        self.method = method
        self.objective = objective
        self.style = style
        self.report_every = report_every
        self.natural_length = natural_length
        self.max_concurrent = max_concurrent
        self.error_rate = error_rate
        self.invalid_rate = invalid_rate
        self.rng = random.Random(order_seed)
        self.check_snapshots = check_snapshots
        self.progress_reports = progress_reports
        self.max_steps = max_steps
        self.trials: dict[str, SimTrial] = {}
        self.order: list[str] = []  # creation order
        self.events: deque[tuple[str, str]] = deque()  # (kind, rid): "created" | "exited"
        self.shutdown: Shutdown | None = None
        self.trace: list[tuple[str, Any]] = []
        self.progress_history: list[float] = []
        self.steps = 0
        self.started = False
        self.stop_counts: dict[str, int] = {}
        self.max_live_seen = 0

    # -- contract checks ------------------------------------------------------------------------

    def _live(self) -> int:
        return sum(1 for t in self.trials.values() if not t.exited)

    def _after_event(self) -> None:
        p = self.method.progress()
        if not 0.0 <= p <= 1.0:
            raise ContractError(f"progress {p} out of [0, 1]")
        if self.progress_history and p < self.progress_history[-1] - 1e-12:
            raise ContractError(f"progress went down: {self.progress_history[-1]} -> {p}")
        if self.shutdown is not None and p != 1.0:
            raise ContractError(f"progress {p} after Shutdown")
        self.progress_history.append(p)
        if self.check_snapshots:
            json.loads(json.dumps(self.method.snapshot(), allow_nan=False))

    def _apply(self, actions: list[Action]) -> None:
        self.trace.append(("actions", [repr(a) for a in actions]))
        for action in actions:
            if self.shutdown is not None:
                raise ContractError(f"{action!r} after Shutdown")
            if isinstance(action, Create):
                if action.request_id in self.trials:
                    raise ContractError(f"duplicate request id {action.request_id}")
                if not isinstance(action.request_id, str):
                    raise ContractError("request ids must be strings")
                trial = SimTrial(action.request_id, action.hparams, action.checkpoint_from)
                if action.checkpoint_from is not None:
                    parent = self.trials.get(action.checkpoint_from)
                    if parent is None:
                        raise ContractError(f"checkpoint_from unknown {action.checkpoint_from}")
                    trial.trained = parent.trained
                    trial.last_target = int(parent.trained)
                self.trials[action.request_id] = trial
                self.order.append(action.request_id)
                self.events.append(("created", action.request_id))
                live = self._live()
                self.max_live_seen = max(self.max_live_seen, live)
                if self.max_concurrent and live > self.max_concurrent:
                    raise ContractError(f"{live} live trials > {self.max_concurrent}")
            elif isinstance(action, ValidateAfter):
                trial = self._known(action.request_id)
                if trial.exited or trial.stopping:
                    raise ContractError(f"ValidateAfter for stopped {action.request_id}")
                if action.length < trial.last_target:
                    raise ContractError(
                        f"ValidateAfter({action.request_id}, {action.length}) goes back from "
                        f"{trial.last_target}"
                    )
                if self.style == "ops" and action.length <= trial.trained:
                    raise ContractError(
                        f"ValidateAfter({action.request_id}, {action.length}) asks for no new "
                        f"training (already at {trial.trained})"
                    )
                trial.target = action.length
                trial.last_target = action.length
            elif isinstance(action, Stop):
                trial = self._known(action.request_id)
                self.stop_counts[action.request_id] = self.stop_counts.get(action.request_id, 0) + 1
                if trial.exited:
                    raise ContractError(f"Stop for exited {action.request_id}")
                if trial.stopping:
                    raise ContractError(f"second Stop for {action.request_id}")
                trial.stopping = True
                self.events.append(("exited", action.request_id))
            elif isinstance(action, Shutdown):
                self.shutdown = action
            else:  # pragma: no cover
                raise ContractError(f"unknown action {action!r}")

    def _known(self, rid: str) -> SimTrial:
        trial = self.trials.get(rid)
        if trial is None:
            raise ContractError(f"unknown request id {rid}")
        return trial

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        self._apply(self.method.initial_operations())
        self._after_event()

    def _runnable(self) -> list[SimTrial]:
        out = []
        for rid in self.order:
            t = self.trials[rid]
            if t.exited or t.stopping or not t.created_notified:
                continue
            if self.style == "ops" and t.target is None:
                continue
            out.append(t)
        return out

    def step(self) -> bool:
        """One event; False when there is nothing left to do."""
        if not self.started:
            self.start()
            return True
        self.steps += 1
        if self.steps > self.max_steps:
            raise ContractError("simulation did not end")
        if self.events:
            kind, rid = self.events.popleft()
            trial = self.trials[rid]
            if kind == "created":
                trial.created_notified = True
                self.trace.append(("created", rid))
                self._apply(self.method.on_trial_created(rid))
            else:
                if trial.exited:
                    return True
                trial.exited = True
                trial.exit_kind = "ok"
                self.trace.append(("exited", rid))
                self._apply(self.method.on_trial_exited(rid))
            self._after_event()
            return True
        runnable = self._runnable()
        if not runnable:
            return False
        trial = runnable[self.rng.randrange(len(runnable))]
        roll = self.rng.random()
        if roll < self.error_rate + self.invalid_rate:
            reason = ExitedReason.INVALID_HP if roll < self.invalid_rate else ExitedReason.ERRORED
            trial.exited = True
            trial.exit_kind = reason.value
            self.trace.append(("exited_early", trial.rid, reason.value))
            self._apply(self.method.on_trial_exited_early(trial.rid, reason))
            self._after_event()
            return True
        if self.style == "ops":
            assert trial.target is not None
            length = float(trial.target)
            trial.target = None
        else:
            length = trial.trained + self.report_every
        if self.progress_reports:
            self.method.on_trial_progress(trial.rid, (trial.trained + length) / 2)
        trial.trained = length
        metric = self.objective(trial.hparams, length, trial.rid)
        trial.reports.append((length, metric))
        self.trace.append(("validation", trial.rid, length, metric))
        self._apply(self.method.on_validation_completed(trial.rid, metric, int(length)))
        if self.style == "metrics" and not trial.stopping and trial.trained >= self.natural_length:
            trial.stopping = True
            self.events.append(("exited", trial.rid))
        self._after_event()
        return True

    def run(self, max_events: int | None = None) -> Simulator:
        """Run until nothing is left (or ``max_events`` more steps)."""
        n = 0
        while max_events is None or n < max_events:
            if not self.step():
                break
            n += 1
        return self

    def finish(self) -> Simulator:
        """Run to the end and check the search shut down cleanly."""
        self.run()
        if self.shutdown is None:
            live = [r for r, t in self.trials.items() if not t.exited]
            raise ContractError(f"search stalled without Shutdown; live trials {live}")
        if any(not t.exited for t in self.trials.values()):
            raise ContractError("Shutdown with trials still running")
        # After Shutdown every further event must be a no-op.
        for rid in list(self.trials)[:3]:
            if self.method.on_trial_exited(rid):
                raise ContractError("actions after Shutdown")
        if self.method.progress() != 1.0:
            raise ContractError("progress is not 1.0 at the end")
        return self

    def swap_method(self, method: SearchMethod) -> None:
        """Replace the method by ``method`` restored from a JSON round trip of a snapshot."""
        state = json.loads(json.dumps(self.method.snapshot(), allow_nan=False))
        method.restore(state)
        self.method = method

    # -- results --------------------------------------------------------------------------------

    @property
    def created(self) -> list[SimTrial]:
        return [self.trials[r] for r in self.order]

    def best(self, smaller_is_better: bool = True) -> SimTrial:
        scored = [t for t in self.created if t.reports]
        sign = 1.0 if smaller_is_better else -1.0
        return min(scored, key=lambda t: sign * t.reports[-1][1])


def finite(x: float) -> bool:
    return math.isfinite(x)
