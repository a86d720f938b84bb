"""Trial metrics: reading points back, once or following live trials (batches are stored by
:mod:`master_server.ingest`; ``ReportMetrics`` calls :meth:`MetricService.notify` once one is).

This is the one read path for every transport: the gRPC ``StreamMetrics`` servicer and the
HTTP API call :meth:`MetricService.read` and forward the pages (:class:`MetricColumns`) it
yields.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Hashable, Iterator, Sequence

from determined_sdk.errors import InvalidArgumentError
from master_server.domain import (
    TERMINAL_TRIAL_STATES,
    MetricColumns,
    MetricQuery,
)
from master_server.store.base import Store
from master_server.waiting import Waker

DEFAULT_PAGE_SIZE = 10_000
MAX_PAGE_SIZE = 100_000


class MetricService:
    """Reads metric points and wakes followers when new points arrive.

    Args:
        store: The master's store.
        follow_poll_s: How often a follower re-checks whether its trials have ended when no
            new points arrive (new points wake it at once).
    """

    def __init__(
        self, store: Store, *, follow_poll_s: float = 0.5, waker: Waker | None = None
    ) -> None:
        self.store = store
        self.waker = waker
        self.poll_s = follow_poll_s
        self._cond = threading.Condition()
        self._version = 0
        self._closed = False

    def notify(self, trial_id: int | None = None) -> None:
        """Wake followers: new points of ``trial_id`` (None: of any trial) may have been stored."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()
        if self.waker is not None:
            self.waker.notify(trial_id)

    def close(self) -> None:
        """End every follow (the master is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.waker is not None:
            self.waker.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def read(
        self,
        trial_ids: Sequence[int],
        *,
        group: str | None = None,
        names: Sequence[str] = (),
        min_steps: int | None = None,
        max_steps: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        follow: bool = False,
        include_superseded: bool = False,
    ) -> Iterator[MetricColumns]:
        """Pages of the points of ``trial_ids``, as columns, in (trial, steps) order.

        Args:
            trial_ids: The trials (at least one; each must exist).
            group: Only this group (None: every group).
            names: Only these metrics; points with none of them are left out.
            min_steps: Only points with ``steps_completed >= min_steps``.
            max_steps: Only points with ``steps_completed <= max_steps``.
            page_size: Points per page, 1 to 100,000.
            follow: After the stored points, keep yielding new ones (in the order they are
                stored) until every trial is in a terminal state.
            include_superseded: Also reports that a restart from an earlier checkpoint
                superseded (see :meth:`Store.supersede_metrics`).

        Raises:
            InvalidArgumentError: No trials, a bad page size, name or steps range.
            NotFoundError: A trial does not exist.
        """
        q = self.query(
            trial_ids,
            group=group,
            names=names,
            min_steps=min_steps,
            max_steps=max_steps,
            page_size=page_size,
            include_superseded=include_superseded,
        )
        self.check_trials(q)
        return self._read(q, follow)

    def check_trials(self, q: MetricQuery) -> None:
        """Raise NotFoundError for the first trial of ``q`` that does not exist (before a
        stream starts)."""
        for tid in q.trial_ids:
            self.store.get_trial(tid)

    @staticmethod
    def query(
        trial_ids: Sequence[int],
        *,
        group: str | None = None,
        names: Sequence[str] = (),
        min_steps: int | None = None,
        max_steps: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        include_superseded: bool = False,
    ) -> MetricQuery:
        """A checked :class:`MetricQuery` (the errors name the argument at fault; arguments
        as :meth:`read`'s)."""
        ids = tuple(trial_ids)
        if not ids:
            raise InvalidArgumentError("trial_ids: give at least one trial id")
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not isinstance(t, int) or t < 1:
                raise InvalidArgumentError(f"trial_ids[{i}]: must be a trial id, got {t!r}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgumentError(
                f"page_size: must be between 1 and {MAX_PAGE_SIZE:,}, got {page_size}"
            )
        if group == "":
            group = None
        for i, n in enumerate(names):
            if not isinstance(n, str) or not n:
                raise InvalidArgumentError(f"names[{i}]: must be a non-empty string, got {n!r}")
        for field, v in (("min_steps", min_steps), ("max_steps", max_steps)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise InvalidArgumentError(f"{field}: must be an int >= 0, got {v!r}")
        if min_steps is not None and max_steps is not None and min_steps > max_steps:
            raise InvalidArgumentError(
                f"min_steps ({min_steps}) must not be greater than max_steps ({max_steps})"
            )
        return MetricQuery(
            ids,
            group=group,
            names=tuple(dict.fromkeys(names)),
            min_steps=min_steps,
            max_steps=max_steps,
            page_size=page_size,
            include_superseded=include_superseded,
        )

    def follow_backlog(self, q: MetricQuery) -> tuple[Follow, Iterator[MetricColumns]]:
        """The first part of a follow: the points stored so far, in (trial, steps) order, and
        the position :meth:`follow_step` goes on from."""
        upto = self.store.last_metric_id()
        backlog = self.store.read_metrics(dataclasses.replace(q, until_id=upto))
        return Follow(q, dict.fromkeys(q.trial_ids, upto)), backlog

    def follow_step(self, f: Follow) -> MetricColumns | None:
        """The next page of points stored since ``f``'s position (None: none yet), in the
        order they were stored; moves the position on. ``f.more`` says whether more are
        stored already; ``f.done``, whether every trial had ended before the read and all
        its points were given (so nothing can follow)."""
        after = f.after
        live = [t for t in after if self.store.get_trial(t).state not in TERMINAL_TRIAL_STATES]
        page_q = dataclasses.replace(
            f.query, trial_ids=tuple(after), after_ids=tuple(after.items())
        )
        page = next(self.store.read_metrics(page_q), None)  # one page: a laggard costs one
        if page is not None:
            for t, last in zip(page.trial_ids, page.last_ids, strict=True):
                after[t] = max(after[t], last)
        f.more = page is not None and len(page) >= page_q.page_size
        if not f.more:  # a trial that had ended before this read has nothing more to give
            f.after = {t: after[t] for t in live}
        return page

    def _read(self, q: MetricQuery, follow: bool) -> Iterator[MetricColumns]:
        if not follow:
            yield from self.store.read_metrics(q)
            return
        # The backlog in (trial, steps) order up to the last stored point; then whatever is
        # stored after it, page by page, until every trial has ended. (The gRPC servicer
        # drives the same steps from a coroutine, so that a follower holds no thread.)
        f, backlog = self.follow_backlog(q)
        yield from backlog
        while True:
            with self._cond:
                version = self._version
            page = self.follow_step(f)
            if page is not None:
                yield page
            if f.done:
                return
            with self._cond:
                if self._closed:
                    return
                if self._version == version and not f.more:
                    self._cond.wait(timeout=self.poll_s)


@dataclasses.dataclass
class Follow:
    """Where a follow of metric points stands: per trial still live, the storage id of the
    last point it has been given."""

    query: MetricQuery
    after: dict[int, int]
    more: bool = False  # the last step left points to give: take the next one at once

    @property
    def done(self) -> bool:
        """True once every followed trial has ended and its last points were given."""
        return not self.after

    @property
    def key(self) -> Hashable:
        """What to wait on for new points: the trial when one is followed, else any."""
        return next(iter(self.after)) if len(self.after) == 1 else None
