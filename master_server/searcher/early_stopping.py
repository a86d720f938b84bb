"""Early stopping and a target metric, as a wrapper around any search method.

:class:`EarlyStoppingSearchMethod` passes every event to the wrapped method and adds:

* ``early_stopping: {patience, min_delta}``: a trial whose searcher metric has not improved by
  more than ``min_delta`` over its best so far for ``patience`` consecutive validations gets
  ``Stop`` (its pending ``ValidateAfter`` from the wrapped method, if any, is dropped). A
  non-finite metric never counts as an improvement. The wrapped method sees the trial's exit as
  a normal one.
* ``target``: the first validation whose metric reaches the target (``<=`` when smaller is
  better, ``>=`` otherwise) stops every live trial and shuts the search down; later events are
  not passed on.

Both rules see every validation a trial reports, not only the ends of its operations, so they
apply whether a trial trains many short operations, one long one, or only reports metrics. A
trial that reports validations has its operation completions counted only when the completion
carries a new value (the trainer's completion repeats its last validation, which already counted).
"""

from __future__ import annotations

import math

from master_server.searcher._common import as_float
from master_server.searcher.base import (
    Action,
    Create,
    ExitedReason,
    JSONDict,
    SearchMethod,
    Shutdown,
    Stop,
    ValidateAfter,
)


class EarlyStoppingSearchMethod(SearchMethod):
    """Adds patience-based early stopping and/or a target metric to ``inner``."""

    kind = "early_stopping"

    def __init__(
        self,
        inner: SearchMethod,
        *,
        smaller_is_better: bool = True,
        patience: int | None = None,
        min_delta: float = 0.0,
        target: float | None = None,
    ) -> None:
        """Wrap a search method.

        Args:
            inner: the search method that decides everything else.
            smaller_is_better: the direction of the searcher metric.
            patience: validations without improvement before a trial is stopped (None: off).
            min_delta: how much better than the best so far counts as an improvement.
            target: stop the search when a metric reaches this value (None: off).
        """
        self.inner = inner
        self._smaller_is_better = smaller_is_better
        self._patience = patience
        self._min_delta = float(min_delta)
        self._target = target
        self._live: dict[str, None] = {}
        self._stopped: dict[str, None] = {}  # live trials that got a Stop (from either layer)
        self._best: dict[str, float] = {}
        self._bad: dict[str, int] = {}
        self._done = False  # the target was reached and the search shut down
        self._last_reported: dict[str, float] = {}  # trials that report validations mid-op

    def _track(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, Create):
                self._live[action.request_id] = None
            elif isinstance(action, Stop):
                self._stopped[action.request_id] = None
        return actions

    def _reached_target(self, metric: float) -> bool:
        if self._target is None or not math.isfinite(metric):
            return False
        return metric <= self._target if self._smaller_is_better else metric >= self._target

    def _improved(self, request_id: str, metric: float) -> bool:
        if not math.isfinite(metric):
            return False
        best = self._best.get(request_id)
        if best is None:
            return True
        if self._smaller_is_better:
            return metric < best - self._min_delta
        return metric > best + self._min_delta

    def initial_operations(self) -> list[Action]:
        """The wrapped method's first actions."""
        return self._track(self.inner.initial_operations())

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Passed on (unless the target was reached)."""
        if self._done:
            return []
        return self._track(self.inner.on_trial_created(request_id))

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Check the target, pass the event on, then apply the patience rule."""
        if self._done:
            return []
        value = as_float(metric)
        last = self._last_reported.get(request_id)
        counted = last is not None and (last == value or (math.isnan(last) and math.isnan(value)))
        if not counted and self._reached_target(value):
            return self._shut_down(request_id, value)
        actions = self._track(self.inner.on_validation_completed(request_id, metric, length))
        if counted:
            return actions
        return self._judge(request_id, value, actions)

    def on_validation_reported(
        self, request_id: str, metric: float, steps_completed: int
    ) -> list[Action] | None:
        """A validation in the middle of an operation: the target and patience rules apply."""
        if self._done or request_id not in self._live:
            return []
        value = as_float(metric)
        self._last_reported[request_id] = value
        if self._reached_target(value):
            return self._shut_down(request_id, value)
        return self._judge(request_id, value, [])

    def _shut_down(self, request_id: str, value: float) -> list[Action]:
        self._done = True
        stops: list[Action] = [Stop(r) for r in self._live if r not in self._stopped]
        self._stopped.update(dict.fromkeys(self._live))
        reason = f"target {self._target} reached by trial {request_id} ({value})"
        return [*stops, Shutdown(failure=False, reason=reason)]

    def _judge(self, request_id: str, value: float, actions: list[Action]) -> list[Action]:
        """The patience rule for one more validation of ``request_id``."""
        if self._patience is None or request_id not in self._live:
            return actions
        if self._improved(request_id, value):
            self._best[request_id] = value
            self._bad[request_id] = 0
            return actions
        self._bad[request_id] = self._bad.get(request_id, 0) + 1
        if self._bad[request_id] < self._patience or request_id in self._stopped:
            return actions
        kept = [
            a for a in actions if not (isinstance(a, ValidateAfter) and a.request_id == request_id)
        ]
        kept.append(Stop(request_id))
        self._stopped[request_id] = None
        return kept

    def on_trial_progress(self, request_id: str, length_done: float) -> None:
        """Passed on."""
        if not self._done:
            self.inner.on_trial_progress(request_id, length_done)

    def _forget(self, request_id: str) -> None:
        self._live.pop(request_id, None)
        self._stopped.pop(request_id, None)
        self._best.pop(request_id, None)
        self._bad.pop(request_id, None)
        self._last_reported.pop(request_id, None)

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """Passed on (unless the target was reached)."""
        self._forget(request_id)
        if self._done:
            return []
        return self._track(self.inner.on_trial_exited(request_id))

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """Passed on (unless the target was reached)."""
        self._forget(request_id)
        if self._done:
            return []
        return self._track(self.inner.on_trial_exited_early(request_id, reason))

    def progress(self) -> float:
        """1.0 once the target was reached, else the wrapped method's progress."""
        return 1.0 if self._done else self.inner.progress()

    def snapshot(self) -> JSONDict:
        """This layer's state with the wrapped method's snapshot inside."""
        return {
            "kind": self.kind,
            "inner": self.inner.snapshot(),
            "live": list(self._live),
            "stopped": list(self._stopped),
            "best": dict(self._best),
            "bad": dict(self._bad),
            "done": self._done,
            "last_reported": {k: v for k, v in self._last_reported.items() if math.isfinite(v)},
        }

    def restore(self, state: JSONDict) -> None:
        """Continue from :meth:`snapshot` (built from the same config)."""
        if state.get("kind") != self.kind:
            raise ValueError(f"searcher snapshot is for {state.get('kind')!r}, not early_stopping")
        self.inner.restore(state["inner"])
        self._live = dict.fromkeys(str(r) for r in state["live"])
        self._stopped = dict.fromkeys(str(r) for r in state["stopped"])
        self._best = {str(k): float(v) for k, v in state["best"].items()}
        self._bad = {str(k): int(v) for k, v in state["bad"].items()}
        self._done = bool(state["done"])
        self._last_reported = {
            str(k): float(v) for k, v in (state.get("last_reported") or {}).items()
        }
