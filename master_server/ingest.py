"""Metric ingestion with group commit: one writer, many batches per transaction, bounded.

Every live trial sends a metric batch every so often; thousands of them at once would each open
a transaction and queue on the database's one writer (SQLite) or on row locks (PostgreSQL). So
``ReportMetrics`` hands its batch to :class:`MetricIngest`, whose writer thread takes whatever
batches are waiting and stores them with one :meth:`Store.add_metrics_many` call: under load the
cost of a transaction is shared by every batch in it, and when idle a batch is written at once.

The queue is bounded: when it is full, :meth:`MetricIngest.submit` raises
:class:`~determined_sdk.errors.ResourceExhaustedError` and the caller retries later, instead of
the master's memory growing without limit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError

from determined_sdk.errors import DeterminedError, ResourceExhaustedError
from master_server.domain import MetricReport
from master_server.store.base import Store

logger = logging.getLogger(__name__)

_Item = tuple[int, str, Sequence[MetricReport], int, "Future[bool]"]


class MetricIngest:
    """Stores metric batches through one writer thread with group commit.

    Args:
        store: where batches go.
        max_pending_reports: reports that may wait to be written before new batches are refused.
        max_reports_per_commit: the most reports one transaction takes.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_pending_reports: int = 500_000,
        max_reports_per_commit: int = 50_000,
    ) -> None:
        self.store = store
        self.max_pending_reports = max_pending_reports
        self.max_reports_per_commit = max_reports_per_commit
        self._queue: deque[_Item] = deque()
        self._pending_reports = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="metric-ingest", daemon=True)
        self._thread.start()

    def submit(
        self, trial_id: int, batch_id: str, reports: Sequence[MetricReport], run_id: int = 0
    ) -> Future[bool]:
        """Queue one batch of run ``run_id`` (0: unknown); the future resolves as
        :meth:`Store.add_metrics` would return.

        Raises:
            ResourceExhaustedError: too many reports are waiting to be written, or the master
                is shutting down (retry later).
        """
        fut: Future[bool] = Future()
        n = max(1, len(reports))
        with self._cond:
            if self._closed:
                raise ResourceExhaustedError("the master is shutting down; retry")
            if self._pending_reports + n > self.max_pending_reports and self._queue:
                raise ResourceExhaustedError(
                    f"metric ingestion is behind ({self._pending_reports} reports waiting);"
                    " retry in a second"
                )
            self._queue.append((trial_id, batch_id, reports, run_id, fut))
            self._pending_reports += n
            self._cond.notify()
        return fut

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            items: list[_Item] = []
            n = 0
            while self._queue and (not items or n < self.max_reports_per_commit):
                item = self._queue.popleft()
                items.append(item)
                n += max(1, len(item[2]))
            self._pending_reports -= n
            return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            # A batch whose caller gave up (its RPC was cancelled) is stored all the same: its
            # retry carries the same batch id and finds it stored.
            try:
                results: list[bool | Exception] = list(
                    self.store.add_metrics_many([item[:4] for item in items])
                )
            except Exception as e:  # the whole transaction failed: every batch in it did
                if not isinstance(e, DeterminedError):
                    logger.exception("storing %d metric batches failed", len(items))
                results = [e] * len(items)
            for (*_, fut), res in zip(items, results, strict=True):
                _resolve(fut, res)

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)


def _resolve(fut: Future[bool], result: bool | Exception) -> None:
    """Settle ``fut`` unless its caller cancelled it (the writer thread must never die)."""
    with contextlib.suppress(InvalidStateError):
        if isinstance(result, Exception):
            fut.set_exception(result)
        else:
            fut.set_result(result)
