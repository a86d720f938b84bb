"""The searcher journal: every input a search method receives, recorded so it can be replayed.

Saving a whole snapshot after every event costs time proportional to the search's size, so a
big search costs quadratic time. The master instead saves, per event, only the *inputs* that
the event fed the search method (one small record), and a full snapshot now and then (see
:mod:`master_server.engine.search_log`). After a restart it restores the last snapshot and
replays the inputs recorded since. That is exact because every search method is deterministic
given its inputs: the built-in ones draw hyperparameters from generators seeded per trial, the
Optuna one re-seeds its sampler before each ask, the custom one only queues what its driver
posted (which is recorded too).

Inputs are JSON lists, each recorded with a checksum of the actions it returned (None for the
inputs that return none), so a replay that decides differently is noticed::

    ["initial"]                               initial_operations()
    ["created", rid]                          on_trial_created
    ["validated", rid, metric, length]        on_validation_completed
    ["reported", rid, metric, steps]          on_validation_reported (when not ignored)
    ["exited", rid]                           on_trial_exited
    ["exited_early", rid, reason]             on_trial_exited_early
    ["progress", rid, length_done]            on_trial_progress
    ["custom", [action, ...], ack_id, progress]   a custom-search driver's post
    ["ack", after_id]                         a custom-search driver read events after an id
    ["p"]                                     progress() returned a new value (it is kept
                                              monotone, so the call changes the method)

Numbers are replayed as recorded (an int metric stays an int); metrics may be NaN or
infinite: the store writes JSON with those literals and reads them back.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from determined_sdk.errors import InvalidArgumentError
from master_server.searcher.base import Action, ExitedReason, JSONDict, SearchMethod
from master_server.searcher.custom import CustomSearchMethod, action_from_json, action_to_json

#: One recorded input: ``[input, checksum of its actions or None]``.
Entry = list[Any]


def actions_checksum(actions: Sequence[Action]) -> int:
    """A short checksum of a list of actions (compared on replay)."""
    return zlib.crc32(repr(list(actions)).encode())


class JournaledSearch(SearchMethod):
    """A search method that records every input it is given (see the module docstring).

    The engine calls this wrapper exactly as it would call the method; :meth:`take_entries`
    hands over what was recorded since the last call, :meth:`replay` feeds recorded entries to
    the method again without recording them.
    """

    def __init__(self, inner: SearchMethod) -> None:
        """Wrap ``inner`` (a fresh method, or one restored from a snapshot)."""
        self.inner = inner
        self._entries: list[Entry] = []
        self._busy_s = 0.0
        self._acked = 0
        self._last_progress = -1.0

    # -- recording -----------------------------------------------------------------------------

    def take_entries(self) -> list[Entry]:
        """The entries recorded since the last call, oldest first (and forget them)."""
        out, self._entries = self._entries, []
        return out

    @property
    def pending_entries(self) -> int:
        """How many entries were recorded since the last :meth:`take_entries`."""
        return len(self._entries)

    @property
    def busy_s(self) -> float:
        """Seconds spent inside the method since :meth:`reset_busy` (what a replay costs)."""
        return self._busy_s

    def reset_busy(self, value: float = 0.0) -> None:
        """Restart the :attr:`busy_s` count (after a snapshot covers everything)."""
        self._busy_s = value

    def _call(self, entry: list[Any], fn: Any, *args: Any) -> list[Action]:
        t0 = time.perf_counter()
        try:
            actions: list[Action] = fn(*args)
        finally:
            self._busy_s += time.perf_counter() - t0
        self._entries.append([entry, actions_checksum(actions)])
        return actions

    # -- SearchMethod --------------------------------------------------------------------------

    def initial_operations(self) -> list[Action]:
        """Recorded as ``["initial"]``."""
        return self._call(["initial"], self.inner.initial_operations)

    def on_trial_created(self, request_id: str) -> list[Action]:
        """Recorded as ``["created", rid]``."""
        return self._call(["created", request_id], self.inner.on_trial_created, request_id)

    def on_validation_completed(self, request_id: str, metric: float, length: int) -> list[Action]:
        """Recorded as ``["validated", rid, metric, length]``."""
        return self._call(
            ["validated", request_id, metric, length],
            self.inner.on_validation_completed,
            request_id,
            metric,
            length,
        )

    def on_validation_reported(
        self, request_id: str, metric: float, steps_completed: int
    ) -> list[Action] | None:
        """Recorded as ``["reported", rid, metric, steps]`` unless the method ignores it."""
        t0 = time.perf_counter()
        try:
            actions = self.inner.on_validation_reported(request_id, metric, steps_completed)
        finally:
            self._busy_s += time.perf_counter() - t0
        if actions is not None:
            entry = ["reported", request_id, metric, steps_completed]
            self._entries.append([entry, actions_checksum(actions)])
        return actions

    def on_trial_exited(self, request_id: str) -> list[Action]:
        """Recorded as ``["exited", rid]``."""
        return self._call(["exited", request_id], self.inner.on_trial_exited, request_id)

    def on_trial_exited_early(self, request_id: str, reason: ExitedReason) -> list[Action]:
        """Recorded as ``["exited_early", rid, reason]``."""
        return self._call(
            ["exited_early", request_id, reason.value],
            self.inner.on_trial_exited_early,
            request_id,
            reason,
        )

    def on_trial_progress(self, request_id: str, length_done: float) -> None:
        """Recorded as ``["progress", rid, length_done]``."""
        self.inner.on_trial_progress(request_id, length_done)
        self._entries.append([["progress", request_id, length_done], None])

    def progress(self) -> float:
        """The method's progress; recorded as ``["p"]`` when it changed (methods keep their
        progress monotone by remembering the highest value they returned)."""
        value = self.inner.progress()
        if value != self._last_progress:
            self._last_progress = value
            self._entries.append([["p"], None])
        return value

    def snapshot(self) -> JSONDict:
        """The method's snapshot."""
        return self.inner.snapshot()

    def restore(self, state: JSONDict) -> None:
        """Restore the method from a snapshot."""
        self.inner.restore(state)
        self._last_progress = -1.0

    # -- custom search ---------------------------------------------------------------------------

    def _custom(self) -> CustomSearchMethod:
        if not isinstance(self.inner, CustomSearchMethod):  # pragma: no cover - engine checks
            raise TypeError("not a custom search")
        return self.inner

    def custom_post(
        self, actions: Sequence[Mapping[str, Any]], ack_id: int, progress: float | None
    ) -> list[Action]:
        """A custom-search driver's post: queue its actions (checked as a whole), acknowledge
        events up to ``ack_id``, take its progress; returns the actions to carry out.

        Raises:
            InvalidArgumentError: a bad action (nothing is queued or recorded then).
        """
        method = self._custom()
        parsed = [action_from_json(a) for a in actions]
        method.push_actions(parsed)
        entry = ["custom", [action_to_json(a) for a in parsed], ack_id, progress]
        if ack_id > 0:
            method.events_after(ack_id)
            self._acked = max(self._acked, ack_id)
        if progress is not None:
            method.set_progress(progress)
        out = method.pending_actions()
        self._entries.append([entry, actions_checksum(out)])
        return out

    def custom_events_after(self, after_id: int) -> list[JSONDict]:
        """Events after ``after_id`` for the driver; those up to it are acknowledged."""
        method = self._custom()
        if after_id > self._acked:
            self._acked = after_id
            self._entries.append([["ack", after_id], None])
        return method.events_after(after_id)

    # -- replay ----------------------------------------------------------------------------------

    def replay(self, entries: Sequence[Entry]) -> int:
        """Feed recorded entries to the method again, in order, recording nothing.

        Returns:
            How many inputs returned actions other than those recorded (0 when the method
            is deterministic, as every built-in one is).

        Raises:
            InvalidArgumentError: an entry this version cannot read.
        """
        diverged = 0
        t0 = time.perf_counter()
        try:
            for entry, checksum in entries:
                actions = self._replay_one(entry)
                if checksum is not None and actions_checksum(actions or []) != checksum:
                    diverged += 1
        finally:
            self._busy_s += time.perf_counter() - t0
        return diverged

    def _replay_one(self, entry: list[Any]) -> list[Action] | None:
        m = self.inner
        kind = entry[0]
        if kind == "initial":
            return m.initial_operations()
        if kind == "created":
            return m.on_trial_created(str(entry[1]))
        if kind == "validated":
            return m.on_validation_completed(str(entry[1]), entry[2], int(entry[3]))
        if kind == "reported":
            return m.on_validation_reported(str(entry[1]), entry[2], int(entry[3]))
        if kind == "exited":
            return m.on_trial_exited(str(entry[1]))
        if kind == "exited_early":
            return m.on_trial_exited_early(str(entry[1]), ExitedReason(entry[2]))
        if kind == "progress":
            m.on_trial_progress(str(entry[1]), entry[2])
            return None
        if kind == "custom":
            method = self._custom()
            method.push_actions([action_from_json(a) for a in entry[1]])
            ack_id = int(entry[2])
            if ack_id > 0:
                method.events_after(ack_id)
                self._acked = max(self._acked, ack_id)
            if entry[3] is not None:
                method.set_progress(entry[3])
            return method.pending_actions()
        if kind == "p":
            self._last_progress = m.progress()
            return None
        if kind == "ack":
            self._acked = max(self._acked, int(entry[1]))
            self._custom().events_after(int(entry[1]))
            return None
        raise InvalidArgumentError(f"searcher event log: unknown input {kind!r}")
