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

On SQLite a backlog is *gathered* by the database: each keyset query answers one row that
holds its points' columns as the text of JSON arrays (``group_concat`` over the ordered keyset
scan) and their stored objects already joined into the page's ``metrics_json``. The page
keeps that text (:class:`~master_server.domain.JsonColumn`, decoded on first use), so a gRPC
reader that takes JSON columns gets it without the master making any Python object per point
(see :func:`_gathered_pages`). PostgreSQL and follows keep the row path.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Integer,
    Select,
    bindparam,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
)

from determined_sdk.metrics_wire import TIMESTAMPS_JSON_SCALE, decode_metrics_array
from master_server.domain import JsonColumn, MetricColumns, MetricQuery
from master_server.store.models import MetricRow
from master_server.store.prepared import Prepared, fetch_rows

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
    prepared: Prepared | None = None
    for trial_id in sorted(set(q.trial_ids)):
        last = (-1, -1)  # before every point: steps_completed >= 0
        while True:
            with read() as conn:
                if prepared is None:
                    prepared = Prepared(conn, stmt)
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
    if not plan.postgres and not q.after_ids and (plan.in_sql or not q.names):
        yield from _gathered_pages(read, plan)
        return
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


# -- SQLite backlogs gathered by the database ----------------------------------------------------

# Timestamps travel as integer multiples of 2**-22 s, exactly: a double at or above 2**30 (any
# time after January 2004) is such a multiple, and below 2**40 the multiple fits in an int64.
# (SQLite prints a double with 15 digits, too few to give it back; 17 cost more than the rest
# of the page.) A page with any other timestamp reads its timestamps again as rows.
_TIME_SCALE = float(TIMESTAMPS_JSON_SCALE)
_TIME_UNIT = 1 / _TIME_SCALE
_TIME_EXACT_FROM = 2.0**30
_TIME_EXACT_BELOW = 2.0**40


class _Gathered:
    """One keyset query's points (of one trial) as columns, from the row SQLite gathered: the
    numbers as the text of JSON arrays without their brackets (group_concat), the groups as a
    JSON array."""

    __slots__ = (
        "body",
        "groups",
        "last_id",
        "last_steps",
        "max_id",
        "n",
        "runs",
        "steps",
        "superseded",
        "times",
        "trial",
        "values",
    )

    def __init__(self, trial: int, n: int) -> None:
        self.trial = trial
        self.n = n
        self.steps = ""
        self.times: str | list[float] = ""  # integers of 2**-22 s, or (not exact) as rows
        self.runs = ""
        self.groups = "[]"  # a JSON array of strings (empty with the query's one group)
        self.superseded: list[bool] | None = None  # None: none is (not asked for)
        self.body = ""  # the points' stored objects
        self.values: list[list[float | None]] = []  # per name, with a names filter
        self.max_id = 0
        # The last point in (steps, id) order: where the next keyset query starts.
        self.last_steps = 0
        self.last_id = 0


def _gather_statements(plan: _Plan) -> tuple[Select[Any], Select[Any]]:
    """The gathering statement of one keyset query (binds: trial, after_steps, after_id, room),
    and the same query's timestamps as rows (for a page whose timestamps are not exact as
    integers, see :data:`_TIME_SCALE`).

    The points are gathered in the order the inner query gives them: SQLite runs an ordered,
    limited subquery as a co-routine that hands its rows to the aggregates one by one, in order.
    """
    q = plan.q
    s = bindparam("after_steps", type_=BigInteger)
    i = bindparam("after_id", type_=BigInteger)

    def window(*cols: Any) -> Select[Any]:
        return (
            plan.where(select(*cols).where(_M.trial_id == bindparam("trial", type_=Integer)))
            .where(_M.steps_completed >= s, or_(_M.steps_completed > s, _M.id > i))
            .order_by(_M.steps_completed, _M.id)
            .limit(bindparam("room", type_=Integer))
        )

    inner_cols: list[Any] = [_M.steps_completed, _M.id, _M.timestamp, _M.run_id, _M.payload]
    if plan.group is not None:
        inner_cols.append(_M.metric_group)
    if plan.superseded is not None:
        inner_cols.append(_M.superseded)
    sub = window(*inner_cols).subquery()
    c = sub.c
    concat = func.group_concat
    cols: list[Any] = [
        func.count(),
        func.max(c.id),
        func.min(c.timestamp),
        func.max(c.timestamp),
        concat(c.steps_completed),
        concat(c.id),
        concat(cast(c.timestamp * literal_column(repr(_TIME_SCALE)), Integer)),
        concat(c.run_id),
        # (a JSON array: json_group_array costs less than group_concat of json_quote)
        func.json_group_array(c.metric_group) if plan.group is not None else literal_column("NULL"),
        concat(c.superseded) if plan.superseded is not None else literal_column("NULL"),
    ]
    if plan.in_sql:
        # ``->`` answers a value's JSON text as stored (exact; "NaN" stays a string); it is
        # applied here because a subquery's column loses the JSON subtype that makes
        # json_group_array take it as JSON.
        cols.extend(func.json_group_array(c.payload.op("->")(n)) for n in q.names)
    else:
        cols.append(concat(c.payload))
    return select(*cols), window(_M.timestamp)


def _last(joined: str) -> int:
    """The last of the integers that group_concat joined with commas."""
    return int(joined[joined.rfind(",") + 1 :])


def _gathered(plan: _Plan, trial: int, row: Row) -> _Gathered:
    """The columns of one gathered row (without timestamps where they were not exact as
    integers: see :data:`_TIME_SCALE`)."""
    n, max_id, first_time, last_time, steps, ids, times, runs, groups, superseded, *rest = row
    g = _Gathered(trial, n)
    if not n:
        return g
    g.max_id = max_id
    g.last_steps = _last(steps)
    g.last_id = _last(ids)
    g.steps = steps
    g.runs = runs
    if first_time >= _TIME_EXACT_FROM and last_time < _TIME_EXACT_BELOW:
        g.times = times
    else:
        g.times = []  # read as rows
    if groups is not None:
        g.groups = groups
    if superseded is not None:
        g.superseded = list(map(bool, orjson.loads("[" + superseded + "]")))
    if plan.in_sql:
        g.values = [_value_column(orjson.loads(v), postgres=False) for v in rest]
    else:
        g.body = rest[0]
    return g


def _gathered_pages(read: ReadConn, plan: _Plan) -> Iterator[MetricColumns]:
    """Pages of each trial's points (ascending trial ids) in (steps, id) order, gathered by
    SQLite; each keyset query asks for the points the page still has room for, so pages fill
    across trials as on the row path."""
    q = plan.q
    gather, times = _gather_statements(plan)
    prepared: tuple[Prepared, Prepared] | None = None
    pending: list[_Gathered] = []
    count = 0
    for trial_id in sorted(set(q.trial_ids)):
        last = (-1, -1)  # before every point: steps_completed >= 0
        while True:
            room = q.page_size - count
            binds = {"trial": trial_id, "after_steps": last[0], "after_id": last[1], "room": room}
            with read() as conn:
                if prepared is None:
                    prepared = Prepared(conn, gather), Prepared(conn, times)
                (row,) = prepared[0].rows(conn, **binds)
                g = _gathered(plan, trial_id, row)
                if g.n and not g.times:
                    g.times = [t for (t,) in prepared[1].rows(conn, **binds)]
            if g.n:
                pending.append(g)
                count += g.n
                if count == q.page_size:
                    yield _gathered_page(plan, pending)
                    pending, count = [], 0
            if g.n < room:
                break
            last = (g.last_steps, g.last_id)
    if pending:
        yield _gathered_page(plan, pending)


def _joined(parts: Sequence[str], n: int, unit: float | None = None) -> JsonColumn:
    """One column of a page from its parts' texts."""
    return JsonColumn("[" + (parts[0] if len(parts) == 1 else ",".join(parts)) + "]", n, unit)


def _page_times(parts: list[_Gathered], n: int) -> Sequence[float]:
    texts = [g.times for g in parts if isinstance(g.times, str)]
    if len(texts) == len(parts):
        return _joined(texts, n, _TIME_UNIT)
    times: list[float] = []
    for g in parts:
        if isinstance(g.times, str):
            times.extend(_joined([g.times], g.n, _TIME_UNIT))
        else:
            times.extend(g.times)
    return times


def _gathered_page(plan: _Plan, parts: list[_Gathered]) -> MetricColumns:
    q = plan.q
    trial_ids: list[int] = []
    counts: list[int] = []
    last_ids: list[int] = []
    for g in parts:  # parts of one trial are consecutive
        if trial_ids and trial_ids[-1] == g.trial:
            counts[-1] += g.n
            last_ids[-1] = max(last_ids[-1], g.max_id)
        else:
            trial_ids.append(g.trial)
            counts.append(g.n)
            last_ids.append(g.max_id)
    n = sum(counts)
    groups: Sequence[str]
    if q.group is not None:
        groups = (q.group,) * n
    elif len(parts) == 1:
        groups = JsonColumn(parts[0].groups, n)
    else:
        groups = _joined([g.groups[1:-1] for g in parts], n)
    superseded: Sequence[bool] = (
        [False] * n
        if plan.superseded is None
        else list(itertools.chain.from_iterable(g.superseded or () for g in parts))
    )
    common: dict[str, Any] = {
        "trial_ids": trial_ids,
        "trial_counts": counts,
        "groups": groups,
        "steps": _joined([g.steps for g in parts], n),
        "timestamps": _page_times(parts, n),
        "last_ids": last_ids,
        "run_ids": _joined([g.runs for g in parts], n),
        "superseded": superseded,
    }
    if q.names:
        values = [
            list(itertools.chain.from_iterable(g.values[k] for g in parts))
            for k in range(len(q.names))
        ]
        return MetricColumns(payloads=(), names=q.names, values=values, **common)
    body = parts[0].body if len(parts) == 1 else ",".join(g.body for g in parts)
    return MetricColumns(payloads=(), metrics_json="[" + body + "]", **common)
