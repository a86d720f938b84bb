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
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Integer,
    Select,
    bindparam,
    cast,
    false,
    or_,
    select,
)

from determined_sdk.metrics_wire import decode_metrics_array
from master_server.domain import MetricColumns, MetricQuery
from master_server.store.models import MetricRow

ReadConn = Callable[[], contextlib.AbstractContextManager[Connection]]
Row = tuple[Any, ...]

_M = MetricRow
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# A chunk of rows from one query: the trial they all belong to (a backlog reads one trial at
# a time, so its rows do not carry the trial id), or None when each row carries its own.
Chunk = tuple[int | None, list[Row]]


class _Plan:
    """What the queries of one read select, and where each column sits in their rows.

    Columns that are the same for every row of a chunk are not selected (a million rows
    would each carry a copy): the trial id in a backlog, the group when the query names one.
    """

    def __init__(self, q: MetricQuery, dialect: str) -> None:
        self.q = q
        self.postgres = dialect == "postgresql"
        # SQLite reads a ``->>`` operand that starts with "$" as a JSON path, not a key, and
        # finds no key with a double quote in it: for such names (and only then) the values
        # are picked in Python from the decoded payload.
        self.in_sql = bool(q.names) and (
            self.postgres or not any(n[0] == "$" or '"' in n for n in q.names)
        )
        cols: list[Any] = [_M.steps_completed, _M.id, _M.timestamp, _M.run_id]
        self.steps, self.id, self.time, self.run = 0, 1, 2, 3

        def add(col: Any) -> int:
            cols.append(col)
            return len(cols) - 1

        self.trial = add(_M.trial_id) if q.after_ids else None
        self.group = add(_M.metric_group) if q.group is None else None
        self.superseded = add(_M.superseded) if q.include_superseded else None
        self.tail = len(cols)  # then the payload, or one value per wanted name
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


class _Prepared:
    """A statement compiled once for the driver, run with new values of its named binds.

    Rows come as the driver's plain tuples: at a million points, SQLAlchemy's ``Row`` objects
    and compiling the statement for each page cost more than the query itself.
    """

    def __init__(self, conn: Connection, stmt: Select[Any]) -> None:
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        self.sql = str(compiled)
        self.params = dict(compiled.params)
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None

    def rows(self, conn: Connection, **binds: Any) -> list[Row]:
        params = {**self.params, **binds}
        args: Any = params if self.order is None else tuple(params[k] for k in self.order)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, args)
            return list(cursor.fetchall())
        finally:
            cursor.close()


def fetch_rows(conn: Connection, stmt: Select[Any]) -> list[Row]:
    """The statement's rows as the driver's plain tuples."""
    return _Prepared(conn, stmt).rows(conn)


def _trial_rows(read: ReadConn, plan: _Plan) -> Iterator[Chunk]:
    """Chunks of each trial's rows (ascending trial ids) in (steps, id) order, by keyset
    pages; one statement, compiled once, serves every page of every trial."""
    q = plan.q
    s = bindparam("after_steps", type_=BigInteger)
    i = bindparam("after_id", type_=BigInteger)
    stmt = (
        plan.where(select(*plan.cols).where(_M.trial_id == bindparam("trial", type_=Integer)))
        .where(_M.steps_completed >= s, or_(_M.steps_completed > s, _M.id > i))
        .order_by(_M.steps_completed, _M.id)
        .limit(q.page_size)
    )
    prepared: _Prepared | None = None
    for trial_id in sorted(set(q.trial_ids)):
        last = (-1, -1)  # before every point: steps_completed >= 0
        while True:
            with read() as conn:
                if prepared is None:
                    prepared = _Prepared(conn, stmt)
                rows = prepared.rows(conn, trial=trial_id, after_steps=last[0], after_id=last[1])
            if rows:
                yield trial_id, rows
            if len(rows) < q.page_size:
                break
            last = (rows[-1][plan.steps], rows[-1][plan.id])


def _new_rows(read: ReadConn, plan: _Plan) -> Iterator[Chunk]:
    """Chunks of rows stored after each trial's position, each in (trial, steps, id) order.

    One primary-key range scan from the lowest position serves every trial; rows at or before
    their own trial's position are dropped. (Per trial, ids are committed in increasing order:
    ``add_metrics`` locks the trial row; across trials they need not be, so one global
    position would not do on PostgreSQL.)
    """
    q = plan.q
    i_trial, i_steps, i_id = plan.trial, plan.steps, plan.id
    assert i_trial is not None
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
            rows = fetch_rows(conn, stmt)
        if not rows:
            return
        lo = rows[-1][i_id]
        new = [r for r in rows if r[i_id] > after[r[i_trial]]]
        if new:
            yield None, sorted(new, key=lambda r: (r[i_trial], r[i_steps], r[i_id]))
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


def _with_picked(chunk: Chunk, names: Sequence[str], payload_at: int) -> Chunk:
    """The ``names`` filter done here (see :class:`_Plan`): the picked values appended after
    the payload; rows with none of them left out."""
    trial, rows = chunk
    kept: list[Row] = []
    for row, metrics in zip(rows, decode_metrics_array([r[payload_at] for r in rows]), strict=True):
        picked = tuple(metrics.get(n) for n in names)
        if any(v is not None for v in picked):
            kept.append((*row, *picked))
    return trial, kept


def _runs(plan: _Plan, chunks: Sequence[Chunk], ids: Sequence[int]) -> tuple[list[int], ...]:
    """Run-length trial ids of a page: (trial ids, counts, last storage id of each)."""
    trial_ids: list[int] = []
    counts: list[int] = []
    if plan.trial is None:  # chunks of one trial each; a trial may span two chunks
        for t, rows in chunks:
            assert t is not None
            if trial_ids and trial_ids[-1] == t:
                counts[-1] += len(rows)
            else:
                trial_ids.append(t)
                counts.append(len(rows))
    else:
        for t, run in itertools.groupby(r[plan.trial] for _, rows in chunks for r in rows):
            trial_ids.append(t)
            counts.append(len(list(run)))
    last_ids: list[int] = []
    at = 0
    for k in counts:
        last_ids.append(max(ids[at : at + k]))
        at += k
    return trial_ids, counts, last_ids


def _page(plan: _Plan, chunks: Sequence[Chunk]) -> MetricColumns:
    rows = chunks[0][1] if len(chunks) == 1 else [r for _, c in chunks for r in c]
    columns = list(zip(*rows, strict=True))
    n = len(rows)
    ids = columns[plan.id]
    trial_ids, counts, last_ids = _runs(plan, chunks, ids)
    q = plan.q
    common: dict[str, Any] = {
        "trial_ids": trial_ids,
        "trial_counts": counts,
        "groups": (q.group,) * n if plan.group is None else columns[plan.group],
        "steps": columns[plan.steps],
        "timestamps": columns[plan.time],
        "last_ids": last_ids,
        "run_ids": columns[plan.run],
        "superseded": (
            [False] * n if plan.superseded is None else [bool(x) for x in columns[plan.superseded]]
        ),
    }
    if not q.names:
        return MetricColumns(payloads=columns[plan.tail], **common)
    if plan.in_sql:
        values = [_value_column(c, plan.postgres) for c in columns[plan.tail :]]
    else:
        values = [list(c) for c in columns[plan.tail + 1 :]]
    return MetricColumns(payloads=(), names=q.names, values=values, **common)


def _split(chunks: list[Chunk], k: int) -> tuple[list[Chunk], list[Chunk]]:
    """The first ``k`` rows of ``chunks``, and the rest."""
    head: list[Chunk] = []
    for i, (t, rows) in enumerate(chunks):
        if len(rows) < k:
            head.append((t, rows))
            k -= len(rows)
            continue
        head.append((t, rows[:k]))
        rest = [(t, rows[k:])] if len(rows) > k else []
        return head, rest + chunks[i + 1 :]
    return head, []


def read_metric_columns(read: ReadConn, q: MetricQuery) -> Iterator[MetricColumns]:
    """Pages of at most ``q.page_size`` points answering ``q`` (trials in ascending id order).

    The caller has checked the query (trials exist, page size >= 1).
    """
    with read() as conn:
        plan = _Plan(q, conn.dialect.name)
    if q.after_ids:
        chunks: Iterator[Chunk] = _new_rows(read, plan)
    else:
        chunks = _trial_rows(read, plan)
    if q.names and not plan.in_sql:
        chunks = (_with_picked(c, q.names, plan.tail) for c in chunks)
    pending: list[Chunk] = []
    count = 0
    for chunk in chunks:
        if not chunk[1]:
            continue
        if not pending and len(chunk[1]) == q.page_size:  # the usual case: no copying
            yield _page(plan, [chunk])
            continue
        pending.append(chunk)
        count += len(chunk[1])
        while count >= q.page_size:
            head, pending = _split(pending, q.page_size)
            count -= q.page_size
            yield _page(plan, head)
    if pending:
        yield _page(plan, pending)
