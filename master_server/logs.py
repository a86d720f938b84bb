"""Trial logs: ingestion from supervisors and queries that can follow a live trial."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence

from determined_sdk.errors import InvalidArgumentError
from master_server.domain import TERMINAL_TRIAL_STATES, LogLine, LogQuery
from master_server.store.base import Store


class LogService:
    """Stores log lines and wakes followers when new ones arrive."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._version = 0
        self._closed = False
        # Replaced, never changed in place: ship() iterates a snapshot without the lock.
        self._listeners: tuple[Callable[[int | None], None], ...] = ()

    def add_listener(self, fn: Callable[[int | None], None]) -> None:
        """Call ``fn(trial_id)`` (from the shipping thread) after new lines of that trial are
        stored, and ``fn(None)`` once when the service closes (every follower should stop);
        it must be cheap."""
        with self._cond:
            self._listeners = (*self._listeners, fn)

    def remove_listener(self, fn: Callable[[int | None], None]) -> None:
        """Stop calling ``fn`` (one registration of it; unknown listeners are ignored)."""
        with self._cond:
            rest = list(self._listeners)
            if fn in rest:
                rest.remove(fn)
            self._listeners = tuple(rest)

    def ship(self, lines: Sequence[LogLine], batch_id: str = "") -> bool:
        """Store shipped lines; False when ``batch_id`` was stored before (a retry)."""
        if not lines:
            return True
        for i, line in enumerate(lines):
            if line.trial_id <= 0:
                raise InvalidArgumentError(
                    f"lines[{i}].trial_id: must be a trial id, got {line.trial_id}"
                )
        for tid in {line.trial_id for line in lines}:
            self.store.get_trial(tid)
        if not self.store.add_logs(lines, batch_id):
            return False
        with self._cond:
            self._version += 1
            self._cond.notify_all()
        for tid in {line.trial_id for line in lines}:
            for fn in self._listeners:
                fn(tid)
        return True

    def close(self) -> None:
        """End every follow: blocking queries return, listeners hear ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            listeners = self._listeners
        for fn in listeners:
            fn(None)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called (a follow should end)."""
        return self._closed

    @staticmethod
    def check(q: LogQuery) -> None:
        """Raise InvalidArgumentError for a query that cannot be answered."""
        if q.head is not None and q.tail is not None:
            raise InvalidArgumentError("head and tail: give at most one")
        for name, v in (("head", q.head), ("tail", q.tail)):
            if v is not None and v < 0:
                raise InvalidArgumentError(f"{name}: must be >= 0, got {v}")

    def page(self, q: LogQuery, after: int | None) -> tuple[list[LogLine], bool]:
        """One page of a follow: the backlog when ``after`` is None (``tail`` applies to it), else
        every line after that id; and whether the trial had ended before the page was read."""
        trial = self.store.get_trial(q.trial_id)
        done = trial.state in TERMINAL_TRIAL_STATES
        page_q = (
            q if after is None else dataclasses.replace(q, after_id=after, head=None, tail=None)
        )
        return self.store.query_logs(page_q), done

    def query(self, q: LogQuery, *, follow: bool) -> Iterator[list[LogLine]]:
        """Pages of matching lines; with ``follow``, keeps going until the trial is terminal."""
        self.check(q)
        self.store.get_trial(q.trial_id)
        if not follow or q.head is not None:
            yield self.store.query_logs(q)
            return
        after = q.after_id
        first = True
        while True:
            with self._cond:
                version = self._version
            lines, done = self.page(q, None if first else after)
            first = False
            if lines:
                after = lines[-1].id
                yield lines
            if done:
                return
            # New lines wake us at once; a trial's end is noticed at the next wake-up (<= 0.5 s).
            with self._cond:
                if self._closed:
                    return
                if self._version == version:
                    self._cond.wait(timeout=0.5)
