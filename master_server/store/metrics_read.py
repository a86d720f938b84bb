"""The metrics read path: every SQL statement that reads metric points, in one place.

Points are read as columns (:class:`~master_server.domain.MetricColumns`), a page at a time,
each page in its own short read transaction (no connection is held while a caller works on a
page). Two orders of access:

* **Backlog** (no ``after_ids``): per trial, a keyset scan in ``(steps_completed, id)`` order
  over ``ix_metrics_trial_group_steps`` (one group) or ``ix_metrics_trial_steps`` (every
  group), bounded by ``min_steps``/``max_steps`` in the index. No OFFSET, no merge.
* **Follow** (``after_ids`` given): rows stored after each trial's last seen row, found
  through the primary key, then put in ``(trial, steps_completed, id)`` order.

Without a ``names`` filter the stored JSON of each point is passed on undecoded (decoding is
the reader's choice, :meth:`MetricColumns.metrics`). With one, the database picks the values
out of the JSON (SQLite's and PostgreSQL's ``->>``) and leaves out points that have none of
them; the page then carries one value column per name and no JSON at all.

Statements are built with SQLAlchemy but their rows are fetched from the driver's cursor:
at a million points, SQLAlchemy's ``Row`` objects cost more than the query itself.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import JSON, Connection, Select, cast, false, or_, select

from determined_sdk.metrics_wire import decode_metrics_array
from master_server.domain import MetricColumns, MetricQuery
from master_server.store.models import MetricRow

ReadConn = Callable[[], contextlib.AbstractContextManager[Connection]]
Row = tuple[Any, ...]

_M = MetricRow
# Every read selects these first, in this order; then ``superseded`` (only when asked for),
# then the payload or one value per wanted name.
_KEY_COLS = (_M.trial_id, _M.steps_completed, _M.id, _M.timestamp, _M.metric_group, _M.run_id)
_TRIAL: Final = 0
_STEPS: Final = 1
_ID: Final = 2
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Plan:
    """What one query selects: the columns, and how the rows' tail is laid out."""

    def __init__(self, q: MetricQuery, dialect: str) -> None:
        self.q = q
        self.postgres = dialect == "postgresql"
        # SQLite reads a ``->>`` operand that starts with "$" as a JSON path, not a key, and
        # finds no key with a double quote in it: for such names (and only then) the values
        # are picked in Python from the decoded payload.
        self.in_sql = bool(q.names) and (
            self.postgres or not any(n[0] == "$" or '"' in n for n in q.names)
        )
        cols: list[Any] = list(_KEY_COLS)  # columns and SQL expressions
        if q.include_superseded:
            cols.append(_M.superseded)
        self.tail = len(cols)
        if self.in_sql:
            doc = cast(_M.payload, JSON) if self.postgres else _M.payload
            self.values = [doc.op("->>")(n) for n in q.names]
            cols.extend(self.values)
        else:
            cols.append(_M.payload)
        self.cols = cols

    def where(self, stmt: Select[Any]) -> Select[Any]:
        q = self.q
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
        if self.in_sql:
            stmt = stmt.where(or_(*(v.is_not(None) for v in self.values)))
        return stmt


def _fetch(conn: Connection, stmt: Select[Any]) -> list[Row]:
    """The statement's rows as the driver's plain tuples (no SQLAlchemy ``Row`` per point)."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    args: Any = (
        tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
    )
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _trial_rows(read: ReadConn, plan: _Plan, trial_id: int) -> Iterator[list[Row]]:
    """Chunks of one trial's rows in (steps, id) order, by keyset pages."""
    q = plan.q
    base = (
        plan.where(select(*plan.cols).where(_M.trial_id == trial_id))
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
            rows = _fetch(conn, stmt)
        if rows:
            yield rows
        if len(rows) < q.page_size:
            return
        last = (rows[-1][_STEPS], rows[-1][_ID])


def _new_rows(read: ReadConn, plan: _Plan) -> Iterator[list[Row]]:
    """Chunks of rows stored after each trial's position, each in (trial, steps, id) order.

    One primary-key range scan from the lowest position serves every trial; rows at or before
    their own trial's position are dropped. (Per trial, ids are committed in increasing order:
    ``add_metrics`` locks the trial row; across trials they need not be, so one global
    position would not do on PostgreSQL.)
    """
    q = plan.q
    after = dict.fromkeys(q.trial_ids, 0)
    after.update(q.after_ids)
    lo = min(after.values())
    while True:
        stmt = (
            plan.where(select(*plan.cols).where(_M.id > lo, _M.trial_id.in_(after)))
            .order_by(_M.id)
            .limit(q.page_size)
        )
        with read() as conn:
            rows = _fetch(conn, stmt)
        if not rows:
            return
        lo = rows[-1][_ID]
        new = [r for r in rows if r[_ID] > after[r[_TRIAL]]]
        if new:
            yield sorted(new, key=lambda r: (r[_TRIAL], r[_STEPS], r[_ID]))
        if len(rows) < q.page_size:
            return


def _value_column(values: Sequence[Any], postgres: bool) -> list[float | None]:
    """One name's values as the database gave them: None where a point lacks the name.

    PostgreSQL's ``->>`` answers text; SQLite's answers numbers, and the strings that stand
    for non-finite values.
    """
    if postgres:
        return [None if v is None else float(v) for v in values]
    if str in set(map(type, values)):
        return [_NON_FINITE.get(v, math.nan) if type(v) is str else v for v in values]
    return list(values)


def _pick_in_python(
    rows: Sequence[Row], names: Sequence[str], payload_at: int
) -> tuple[list[Row], list[list[float | None]]]:
    """The ``names`` filter done here (see :class:`_Plan`): rows with none of them left out."""
    kept: list[Row] = []
    cols: list[list[float | None]] = [[] for _ in names]
    for row, metrics in zip(rows, decode_metrics_array([r[payload_at] for r in rows]), strict=True):
        picked = [metrics.get(n) for n in names]
        if any(v is not None for v in picked):
            kept.append(row)
            for col, v in zip(cols, picked, strict=True):
                col.append(v)
    return kept, cols


def _page(plan: _Plan, rows: Sequence[Row]) -> MetricColumns:
    columns = list(zip(*rows, strict=True))
    trial, steps, ids, stamps, groups, run_ids = columns[:6]
    n = len(rows)
    superseded = [bool(x) for x in columns[6]] if plan.q.include_superseded else [False] * n
    trial_ids: list[int] = []
    counts: list[int] = []
    last_ids: list[int] = []
    if trial[0] == trial[-1]:  # the usual case: one trial's page
        trial_ids, counts, last_ids = [trial[0]], [n], [max(ids)]
    else:
        at = 0
        for t, run in itertools.groupby(trial):
            k = len(list(run))
            trial_ids.append(t)
            counts.append(k)
            last_ids.append(max(ids[at : at + k]))
            at += k
    common: dict[str, Any] = {
        "trial_ids": trial_ids,
        "trial_counts": counts,
        "groups": groups,
        "steps": steps,
        "timestamps": stamps,
        "last_ids": last_ids,
        "run_ids": run_ids,
        "superseded": superseded,
    }
    if not plan.q.names:
        return MetricColumns(payloads=columns[plan.tail], **common)
    if plan.in_sql:
        values = [_value_column(c, plan.postgres) for c in columns[plan.tail :]]
    else:
        values = [list(c) for c in columns[plan.tail + 1 :]]
    return MetricColumns(payloads=(), names=plan.q.names, values=values, **common)


def read_metric_columns(read: ReadConn, q: MetricQuery) -> Iterator[MetricColumns]:
    """Pages of at most ``q.page_size`` points answering ``q`` (trials in ascending id order).

    The caller has checked the query (trials exist, page size >= 1).
    """
    with read() as conn:
        plan = _Plan(q, conn.dialect.name)
    if q.after_ids:
        chunks: Iterator[list[Row]] = _new_rows(read, plan)
    else:
        chunks = itertools.chain.from_iterable(
            _trial_rows(read, plan, t) for t in sorted(set(q.trial_ids))
        )
    if q.names and not plan.in_sql:
        chunks = (_with_picked(c, q.names, plan.tail) for c in chunks)
    pending: list[Row] = []
    for chunk in chunks:
        if not chunk:
            continue
        if not pending and len(chunk) == q.page_size:  # the usual case: no copying
            yield _page(plan, chunk)
            continue
        pending.extend(chunk)
        while len(pending) >= q.page_size:
            head, pending = pending[: q.page_size], pending[q.page_size :]
            yield _page(plan, head)
    if pending:
        yield _page(plan, pending)


def _with_picked(rows: Sequence[Row], names: Sequence[str], payload_at: int) -> list[Row]:
    """Rows with the picked values appended after the payload (the layout :func:`_page` reads
    when the names filter is not done in SQL)."""
    kept, cols = _pick_in_python(rows, names, payload_at)
    return (
        [(*r, *vals) for r, vals in zip(kept, zip(*cols, strict=True), strict=True)] if kept else []
    )
