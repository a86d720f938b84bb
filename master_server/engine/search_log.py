"""How a search is persisted: a snapshot now and then, one small log record per event.

After every searcher event the master must be able to resume the search exactly. Writing the
whole state each time costs O(trials) per event (a 10,000-trial ASHA snapshot is ~256 KiB), so
a search costs quadratic time. :class:`SearchLog` writes instead, per event, one record with

* ``in``: the inputs the event fed the search method, with checksums of their actions
  (:class:`~master_server.searcher.journal.JournaledSearch` records them);
* ``trials``: the runtimes of the trials the event changed (operations handed out, length
  completed, closed by the searcher), not those of every trial;
* ``started`` and ``shutdown``;

and a full snapshot (method snapshot + every trial runtime) when any of these holds:

* no snapshot was written yet;
* the log written since the last snapshot is at least as large as that snapshot (and at least
  :data:`MIN_LOG_BYTES`): snapshot bytes are then paid for by as many log bytes, so the cost
  per event stays independent of the number of trials (amortized), and the log a restart
  reads is never larger than the snapshot;
* the search method has spent :data:`MAX_REPLAY_S` seconds (or as long as the last snapshot
  took to write, if longer) deciding since the last snapshot: a restart replays at most
  about that much work (Optuna's samplers can be slow), and a snapshot costs at most as much
  as the decisions it covers.

Writing a snapshot deletes the log records it covers in the same transaction. On restart
:meth:`SearchLog.restore` loads the snapshot, restores the method from it and replays the
records after it (inputs to the method, trial runtimes over the saved ones).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from master_server.domain import JSONDict
from master_server.searcher.base import Shutdown
from master_server.store.base import Store

if TYPE_CHECKING:
    from master_server.engine.state import ExperimentRuntime

logger = logging.getLogger(__name__)

#: A snapshot is not rewritten before this much log was written since the last one.
MIN_LOG_BYTES = 64 * 1024
#: Searcher decision time since the last snapshot that makes the next save a snapshot.
MAX_REPLAY_S = 1.0

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class SearchLog:
    """Per-experiment bookkeeping of what was persisted since the last snapshot."""

    has_snapshot: bool = False
    snapshot_bytes: int = 0
    snapshot_s: float = 0.0
    log_bytes: int = 0
    records: int = 0  # log records written since the last snapshot
    snapshots: int = 0  # snapshots written by this master (for tests and benchmarks)

    def save(self, store: Store, rt: ExperimentRuntime) -> None:
        """Persist what changed since the last save: one record, or a snapshot (see the
        module docstring)."""
        entries = rt.searcher.take_entries()
        dirty = rt.dirty
        for entry, _ in entries:
            if len(entry) > 1 and isinstance(entry[1], str):
                dirty.add(entry[1])
        record: JSONDict = {
            "in": entries,
            "trials": {rid: rt.trials[rid].to_json() for rid in sorted(dirty) if rid in rt.trials},
            "started": rt.started,
            "shutdown": _shutdown_json(rt.shutdown),
        }
        dirty.clear()
        size = len(_ENCODE(record))
        try:
            if (
                not self.has_snapshot
                or self.log_bytes + size >= max(MIN_LOG_BYTES, self.snapshot_bytes)
                or rt.searcher.busy_s >= max(MAX_REPLAY_S, self.snapshot_s)
            ):
                self.write_snapshot(store, rt)
                return
            store.append_searcher_event(rt.experiment_id, record)
        except BaseException:
            # These inputs are in no record: only a whole snapshot can cover them now.
            self.has_snapshot = False
            raise
        self.log_bytes += size
        self.records += 1

    def forget_snapshot(self) -> None:
        """What was saved since the last snapshot was lost (a rolled-back transaction): the
        next save writes a whole snapshot."""
        self.has_snapshot = False

    def snapshot_stored(self, state: JSONDict) -> None:
        """``state`` (:func:`full_state`) was stored by someone else (with the experiment's
        row at creation): the next events are records on top of it."""
        self.has_snapshot = True
        self.snapshot_bytes = len(_ENCODE(state))
        self.log_bytes = 0
        self.records = 0

    def write_snapshot(self, store: Store, rt: ExperimentRuntime) -> None:
        """Write the whole state; the log records before it are deleted with it."""
        t0 = time.perf_counter()
        self.snapshot_bytes = store.save_searcher_state(rt.experiment_id, full_state(rt))
        self.snapshot_s = time.perf_counter() - t0
        self.has_snapshot = True
        self.log_bytes = 0
        self.records = 0
        self.snapshots += 1
        rt.searcher.reset_busy()
        rt.dirty.clear()

    def restore(self, store: Store, rt: ExperimentRuntime) -> dict[str, Any]:
        """Load ``rt``'s search: snapshot, then the records after it replayed.

        Returns:
            The saved trial runtimes by request id.
        """
        log = store.load_searcher_log(rt.experiment_id)
        state = log.snapshot or {}
        if state.get("method") is not None:
            rt.searcher.restore(state["method"])
        started = bool(state.get("started"))
        shutdown = state.get("shutdown")
        saved: dict[str, Any] = dict(state.get("trials", {}))
        diverged = 0
        log_bytes = 0
        t0 = time.perf_counter()
        for _, record in log.events:
            diverged += rt.searcher.replay(record.get("in", []))
            saved.update(record.get("trials", {}))
            started = bool(record.get("started", started))
            shutdown = record.get("shutdown")
            log_bytes += len(_ENCODE(record))
        if log.events:
            logger.info(
                "experiment %d: replayed %d searcher event(s) after its snapshot in %.3f s",
                rt.experiment_id,
                len(log.events),
                time.perf_counter() - t0,
            )
        if diverged:
            logger.error(
                "experiment %d: %d replayed searcher input(s) decided differently than "
                "recorded; the search goes on from the replayed state",
                rt.experiment_id,
                diverged,
            )
        rt.started = started
        rt.shutdown = (
            Shutdown(failure=bool(shutdown["failure"]), reason=str(shutdown.get("reason", "")))
            if shutdown
            else None
        )
        self.has_snapshot = log.snapshot is not None
        self.snapshot_bytes = len(_ENCODE(log.snapshot)) if log.snapshot is not None else 0
        self.log_bytes = log_bytes
        self.records = len(log.events)
        rt.searcher.take_entries()  # a replay records nothing, but be sure
        return saved


def _shutdown_json(sd: Shutdown | None) -> JSONDict | None:
    return None if sd is None else {"failure": sd.failure, "reason": sd.reason}


def full_state(rt: ExperimentRuntime) -> JSONDict:
    """The whole persisted state of a search: method snapshot, flags, trial runtimes."""
    return {
        "method": rt.searcher.snapshot(),
        "started": rt.started,
        "shutdown": _shutdown_json(rt.shutdown),
        "trials": {rid: t.to_json() for rid, t in rt.trials.items()},
    }
