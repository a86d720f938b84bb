"""The custom search method: an external driver decides, the master carries out.

:class:`CustomSearchMethod` creates nothing by itself. Every event the master feeds it is
recorded as a JSON dict for the user's driver to fetch (:meth:`CustomSearchMethod.pop_events`);
the driver answers with actions (:meth:`CustomSearchMethod.push_actions`), which the method
hands back to the master from its next ``on_*`` call, or at once from
:meth:`CustomSearchMethod.pending_actions` (the master should call it right after a push).

Events (each with an increasing ``"id"``)::

    {"type": "initial_operations"}
    {"type": "trial_created", "request_id": "r1"}
    {"type": "validation", "request_id": "r1", "metric": 0.25, "length": 100}
    {"type": "trial_progress", "request_id": "r1", "length_done": 50.0}   # coalesced
    {"type": "trial_exited", "request_id": "r1"}
    {"type": "trial_exited_early", "request_id": "r1", "reason": "ERRORED"}

Actions as JSON (:func:`action_to_json` / :func:`action_from_json`)::

    {"type": "create", "request_id": "t1", "hparams": {...}, "checkpoint_from": null}
    {"type": "validate_after", "request_id": "t1", "length": 100}
    {"type": "stop", "request_id": "t1"}
    {"type": "shutdown", "failure": false, "reason": ""}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from determined_sdk.errors import InvalidArgumentError
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


def action_to_json(action: Action) -> JSONDict:
    """An action as a JSON dict (see the module docstring)."""
    if isinstance(action, Create):
        return {
            "type": "create",
            "request_id": action.request_id,
            "hparams": action.hparams,
            "checkpoint_from": action.checkpoint_from,
        }
    if isinstance(action, ValidateAfter):
        return {"type": "validate_after", "request_id": action.request_id, "length": action.length}
    if isinstance(action, Stop):
        return {"type": "stop", "request_id": action.request_id}
    return {"type": "shutdown", "failure": action.failure, "reason": action.reason}


def action_from_json(data: Mapping[str, Any]) -> Action:
    """Parse an action dict (see the module docstring).

    Raises:
        InvalidArgumentError: unknown type or a bad field.
    """
    kind = data.get("type")
    try:
        if kind == "create":
            hparams = data.get("hparams") or {}
            if not isinstance(hparams, Mapping):
                raise InvalidArgumentError("action.hparams: must be a mapping")
            parent = data.get("checkpoint_from")
            return Create(
                _rid(data),
                dict(hparams),
                checkpoint_from=None if parent is None else str(parent),
            )
        if kind == "validate_after":
            length = data.get("length")
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise InvalidArgumentError(
                    f"action.length: must be a positive integer, got {length!r}"
                )
            return ValidateAfter(_rid(data), length)
        if kind == "stop":
            return Stop(_rid(data))
        if kind == "shutdown":
            return Shutdown(
                failure=bool(data.get("failure", False)), reason=str(data.get("reason", ""))
            )
    except KeyError as exc:
        raise InvalidArgumentError(f"action.{exc.args[0]}: required") from None
    raise InvalidArgumentError(
        f"action.type: must be one of create, validate_after, stop, shutdown, got {kind!r}"
    )


def _rid(data: Mapping[str, Any]) -> str:
    rid = data["request_id"]
    if not isinstance(rid, str) or not rid:
        raise InvalidArgumentError(f"action.request_id: must be a non-empty string, got {rid!r}")
    return rid


def _finite_or_none(value: float) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


class CustomSearchMethod(SearchMethod):
    """Records events for an external driver and returns the actions it pushes."""

    kind = "custom"

    def __init__(self) -> None:
        """An empty queue of actions and events."""
        self._events: list[JSONDict] = []
        self._next_event = 1
        self._queue: list[Action] = []
        self._known: dict[str, None] = {}  # request ids ever created (via pushed Creates)
        self._shutdown_pushed = False
        self._shutdown_returned = False
        self._progress = 0.0

    # -- driver side ----------------------------------------------------------------------------

    def push_actions(self, actions: Sequence[Action | Mapping[str, Any]]) -> None:
        """Queue actions from the driver (objects or their JSON dicts), checked as a whole.

        Raises:
            InvalidArgumentError: a duplicate or unknown request id, an action after Shutdown,
                a bad JSON action. Nothing is queued then.
        """
        parsed = [a if not isinstance(a, Mapping) else action_from_json(a) for a in actions]
        known = dict(self._known)
        shutdown = self._shutdown_pushed
        for i, action in enumerate(parsed):
            where = f"actions[{i}]"
            if shutdown:
                raise InvalidArgumentError(f"{where}: the search is already shut down")
            if isinstance(action, Create):
                if action.request_id in known:
                    raise InvalidArgumentError(
                        f"{where}.request_id: {action.request_id!r} was already created"
                    )
                if action.checkpoint_from is not None and action.checkpoint_from not in known:
                    raise InvalidArgumentError(
                        f"{where}.checkpoint_from: unknown request id {action.checkpoint_from!r}"
                    )
                known[action.request_id] = None
            elif isinstance(action, ValidateAfter | Stop):
                if action.request_id not in known:
                    raise InvalidArgumentError(
                        f"{where}.request_id: unknown request id {action.request_id!r}"
                    )
            elif isinstance(action, Shutdown):
                shutdown = True
        self._known = known
        self._shutdown_pushed = shutdown
        self._queue.extend(parsed)

    def pending_actions(self) -> list[Action]:
        """Take the queued actions (the master carries them out)."""
        out, self._queue = self._queue, []
        if any(isinstance(a, Shutdown) for a in out):
            self._shutdown_returned = True
        return out

    def pop_events(self) -> list[JSONDict]:
        """Take the events recorded since the last call, oldest first."""
        out, self._events = self._events, []
        return out

    def events_after(self, after_id: int) -> list[JSONDict]:
        """Events with an id above ``after_id``, oldest first; those up to it are dropped.

        A driver acknowledges events by asking for the ones after them, so a driver that
        restarts and asks again from its last processed id (or 0) loses nothing.
        """
        self._events = [e for e in self._events if int(e["id"]) > after_id]
        return [dict(e) for e in self._events]

    def set_progress(self, fraction: float) -> None:
        """The driver's own estimate of search progress (kept monotone, capped below 1)."""
        value = _finite_or_none(fraction)
        if value is not None:
            self._progress = max(self._progress, min(value, 0.999))

    # -- master side ----------------------------------------------------------------------------

    def _record(self, event: JSONDict) -> list[Action]:
        event["id"] = self._next_event
        self._next_event += 1
        self._events.append(event)
        return self.pending_actions()

    def initial_operations(self) -> list[Action]:
        """Record the start; return whatever the driver pushed already."""
        return self._record({"type": "initial_operations"})

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Record the event; return the queued actions."""
        return self._record({"type": "trial_created", "request_id": request_id})

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Record the event; return the queued actions."""
        return self._record(
            {
                "type": "validation",
                "request_id": request_id,
                "metric": _finite_or_none(metric),
                "length": length,
            }
        )

    def on_trial_progress(self, request_id: str, length_done: float) -> None:
        """Record progress, replacing a previous progress event of the same trial if it is last."""
        event = {
            "type": "trial_progress",
            "request_id": request_id,
            "length_done": _finite_or_none(length_done),
        }
        last = self._events[-1] if self._events else None
        if last and last["type"] == "trial_progress" and last["request_id"] == request_id:
            last["length_done"] = event["length_done"]
            return
        event["id"] = self._next_event
        self._next_event += 1
        self._events.append(event)

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """Record the event; return the queued actions."""
        return self._record({"type": "trial_exited", "request_id": request_id})

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """Record the event; return the queued actions."""
        return self._record(
            {"type": "trial_exited_early", "request_id": request_id, "reason": reason.value}
        )

    def progress(self) -> float:
        """The driver's estimate (:meth:`set_progress`); 1.0 once a Shutdown was handed out."""
        return 1.0 if self._shutdown_returned else self._progress

    def snapshot(self) -> JSONDict:
        """Undelivered events, queued actions, known request ids and progress."""
        return {
            "kind": self.kind,
            "events": [dict(e) for e in self._events],
            "next_event": self._next_event,
            "queue": [action_to_json(a) for a in self._queue],
            "known": list(self._known),
            "shutdown_pushed": self._shutdown_pushed,
            "shutdown_returned": self._shutdown_returned,
            "progress": self._progress,
        }

    def restore(self, state: JSONDict) -> None:
        """Continue from :meth:`snapshot`."""
        if state.get("kind") != self.kind:
            raise InvalidArgumentError(
                f"searcher snapshot is for {state.get('kind')!r}, not custom"
            )
        self._events = [dict(e) for e in state["events"]]
        self._next_event = int(state["next_event"])
        self._queue = [action_from_json(a) for a in state["queue"]]
        self._known = dict.fromkeys(str(r) for r in state["known"])
        self._shutdown_pushed = bool(state["shutdown_pushed"])
        self._shutdown_returned = bool(state["shutdown_returned"])
        self._progress = float(state["progress"])
