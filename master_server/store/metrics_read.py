"""The metrics read path: every SQL statement that reads metric points, in one place.

Points are read as columns (:class:`~master_server.domain.MetricColumns`), a page at a time,
each page in its own short read transaction (no connection is held while a caller works on a
page). Two orders of access:

* **Backlog** (no ``after_ids``): per trial, a keyset scan in ``(steps_completed, id)`` order
  over ``ix_metrics_trial_group_steps`` (one group) or ``ix_metrics_trial_steps`` (every
  group), bounded by ``min_steps``/``max_steps`` in the index. No OFFSET, no merge.
* **Follow** (``after_ids`` given): rows stored after each trial's last seen row, found
  through the primary key, then put in ``(trial, steps_completed, id)`` order.

The stored JSON of each point is passed on undecoded unless a ``names`` filter asks for some
metrics only; decoding is the reader's choice (:meth:`MetricColumns.metrics`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Select, false, or_, select

from determined_sdk.metrics_wire import decode_metrics_array
from master_server.domain import MetricColumns, MetricQuery
from master_server.store.models import MetricRow

ReadConn = Callable[[], contextlib.AbstractContextManager[Connection]]
EncodeMetrics = Callable[[dict[str, float]], str]

_M = MetricRow
_COLS = (
    _M.trial_id,
    _M.steps_completed,
    _M.id,
    _M.timestamp,
    _M.metric_group,
    _M.payload,
    _M.run_id,
    _M.superseded,
)
_TRIAL: Final = 0
_STEPS: Final = 1
_ID: Final = 2
_PAYLOAD: Final = 5


_Rows = Select[int, int, int, float, str, str, int, bool]


def _filtered(stmt: _Rows, q: MetricQuery) -> _Rows:
    if not q.include_superseded:
        stmt = stmt.where(_M.superseded == false())
    if q.until_id is not None:
        stmt = stmt.where(_M.id <= q.until_id)
    if q.group is not None:
        stmt = stmt.where(_M.metric_group == q.group)
    if q.min_steps is not None:
        stmt = stmt.where(_M.steps_completed >= q.min_steps)
    if q.max_steps is not None:
        stmt = stmt.where(_M.steps_completed <= q.max_steps)
    return stmt


def _trial_rows(read: ReadConn, trial_id: int, q: MetricQuery) -> Iterator[Sequence[Any]]:
    """Chunks of one trial's rows in (steps, id) order, by keyset pages."""
    base = (
        _filtered(select(*_COLS).where(_M.trial_id == trial_id), q)
        .order_by(_M.steps_completed, _M.id)
        .limit(q.page_size)
    )
    last: tuple[int, int] | None = None
    while True:
        stmt = base
        if last is not None:
            s, i = last
            stmt = stmt.where(_M.steps_completed >= s, or_(_M.steps_completed > s, _M.id > i))
        with read() as conn:
            rows = conn.execute(stmt).all()
        if rows:
            yield rows
        if len(rows) < q.page_size:
            return
        last = (rows[-1][_STEPS], rows[-1][_ID])


def _new_rows(read: ReadConn, q: MetricQuery) -> Iterator[Sequence[Any]]:
    """Chunks of rows stored after each trial's position, each in (trial, steps, id) order.

    One primary-key range scan from the lowest position serves every trial; rows at or before
    their own trial's position are dropped. (Per trial, ids are committed in increasing order:
    ``add_metrics`` locks the trial row; across trials they need not be, so one global
    position would not do on PostgreSQL.)
    """
    after = dict.fromkeys(q.trial_ids, 0)
    after.update(q.after_ids)
    lo = min(after.values())
    while True:
        stmt = (
            _filtered(select(*_COLS).where(_M.id > lo, _M.trial_id.in_(after)), q)
            .order_by(_M.id)
            .limit(q.page_size)
        )
        with read() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return
        lo = rows[-1][_ID]
        new = [r for r in rows if r[_ID] > after[r[_TRIAL]]]
        if new:
            yield sorted(new, key=lambda r: (r[_TRIAL], r[_STEPS], r[_ID]))
        if len(rows) < q.page_size:
            return


def _select_names(
    rows: Sequence[Any], names: Sequence[str], encode: EncodeMetrics
) -> tuple[list[Any], list[str]]:
    """Keep only the wanted metrics of each row; rows with none of them are left out."""
    kept: list[Any] = []
    payloads: list[str] = []
    for row, metrics in zip(rows, decode_metrics_array([r[_PAYLOAD] for r in rows]), strict=True):
        picked = {k: metrics[k] for k in names if k in metrics}
        if picked:
            kept.append(row)
            payloads.append(encode(picked))
    return kept, payloads


def _page(rows: Sequence[Any], payloads: Sequence[str] | None) -> MetricColumns:
    trial, steps, ids, stamps, groups, stored, run_ids, superseded = zip(*rows, strict=True)
    trial_ids: list[int] = []
    counts: list[int] = []
    last_ids: list[int] = []
    at = 0
    for t, run in itertools.groupby(trial):
        n = len(list(run))
        trial_ids.append(t)
        counts.append(n)
        last_ids.append(max(ids[at : at + n]))
        at += n
    return MetricColumns(
        trial_ids=trial_ids,
        trial_counts=counts,
        groups=groups,
        steps=steps,
        timestamps=stamps,
        payloads=stored if payloads is None else payloads,
        last_ids=last_ids,
        run_ids=run_ids,
        superseded=[bool(x) for x in superseded],
    )


def read_metric_columns(
    read: ReadConn, q: MetricQuery, encode: EncodeMetrics
) -> Iterator[MetricColumns]:
    """Pages of at most ``q.page_size`` points answering ``q`` (trials in ascending id order).

    The caller has checked the query (trials exist, page size >= 1).
    """
    if q.after_ids:
        chunks: Iterator[Sequence[Any]] = _new_rows(read, q)
    else:
        chunks = itertools.chain.from_iterable(
            _trial_rows(read, t, q) for t in sorted(set(q.trial_ids))
        )
    pending: list[Any] = []
    pending_payloads: list[str] = []
    for chunk in chunks:
        if q.names:
            chunk, payloads = _select_names(chunk, q.names, encode)
        else:
            payloads = []
        if not pending and len(chunk) == q.page_size:  # the usual case: no copying
            yield _page(chunk, payloads if q.names else None)
            continue
        pending.extend(chunk)
        pending_payloads.extend(payloads)
        while len(pending) >= q.page_size:
            head, pending = pending[: q.page_size], pending[q.page_size :]
            head_p, pending_payloads = (
                pending_payloads[: q.page_size],
                pending_payloads[q.page_size :],
            )
            yield _page(head, head_p if q.names else None)
    if pending:
        yield _page(pending, pending_payloads if q.names else None)
