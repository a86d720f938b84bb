"""Metric series kept as columns: each (trial, group, metric name)'s points, ready for a chart.

A chart of 100 trials x 10k points read from ``metrics`` decodes a million rows (about a
second on SQLite before any work). So the store also keeps, per (trial, group, name), the
points that a chart read sees (not superseded, in ``(steps_completed, id)`` order, those that
carry the name) as three packed columns: steps (int64), timestamps and values (float64), in
``metric_series`` rows ("segments") read back with a few ``frombytes``. Nothing is lost, so a
reader computes exactly what it would from ``metrics`` (any ``max_points``, or every point).

A series is its segments, then its *tail*: the points of ``metrics`` stored after them (steps
at or after the state's ``last_steps``, ids after its ``last_id``), read and decoded by the
reader. Ingestion (:func:`append`, in the transaction that stores the points) only reads the
series states of a commit's trials; once about :data:`EXTEND_AT` points have gathered in a
tail, the commit that brings more moves the tail and its own points into a new segment (its
own points from memory, not decoded again). Unsealed segments are merged once they number
:data:`TAIL_SEGMENTS` and sealed from :data:`SEAL_POINTS` points, so a series stays a few rows.

``metric_series_state`` says, per (trial, group), whether its segments are *complete*. A
series is rebuilt from ``metrics`` (:func:`rebuild`) instead when:

* a commit brings points at a step below the segments' last step (they would go in the
  middle; the series is marked incomplete and the next reader rebuilds it);
* a restart from a checkpoint supersedes points (:meth:`SQLStore.supersede_metrics` rebuilds
  the trial's series in its own transaction);
* points were stored before this table existed (no state row, but rows in ``metrics``: the
  first reader builds it).
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, false, func, insert, select, update

from determined_sdk.metrics_wire import decode_metrics_array, pack_column, unpack_column
from master_server.domain import MetricReport, SeriesColumns
from master_server.store.models import MetricRow, MetricSeriesRow, MetricSeriesStateRow
from master_server.store.prepared import DriverStatement

#: Unsealed segments of one series that trigger a merge.
TAIL_SEGMENTS = 32
#: Points from which a merged segment is sealed (never rewritten again).
SEAL_POINTS = 4096
#: Points a series' tail gathers (read from ``metrics``) before a commit moves them into a
#: segment: the most rows a reader decodes per series.
EXTEND_AT = 256
#: Reports decoded at a time by a rebuild.
_REBUILD_CHUNK = 20_000

_S = MetricSeriesRow
_ST = MetricSeriesStateRow
_M = MetricRow


class _Builder:
    """Columns of one series being assembled (by a rebuild or one commit's points)."""

    __slots__ = ("steps", "times", "values")

    def __init__(self) -> None:
        self.steps: array[int] = array("q")
        self.times: array[float] = array("d")
        self.values: array[float] = array("d")

    def __len__(self) -> int:
        return len(self.values)


def _segment(
    trial_id: int, group: str, name: str, seq: int, cols: _Builder, lo: int = 0, hi: int = -1
) -> dict[str, Any]:
    if hi < 0:
        hi = len(cols.values)
    return {
        "trial_id": trial_id,
        "metric_group": group,
        "name": name,
        "seq": seq,
        "count": hi - lo,
        "vals": pack_column(cols.values[lo:hi]),
        "steps": pack_column(cols.steps[lo:hi]),
        "times": pack_column(cols.times[lo:hi]),
    }


# The statements of the ingestion path, built once (building them per commit cost more than
# running them).
_HAS_POINTS = (
    select(_M.id)
    .where(
        _M.trial_id == bindparam("tid"),
        _M.metric_group == bindparam("group"),
        _M.superseded == false(),
    )
    .limit(1)
)
_STATE_COLS = (
    _ST.trial_id,
    _ST.metric_group,
    _ST.complete,
    _ST.last_steps,
    _ST.last_id,
    _ST.next_seq,
    _ST.tails,
)
_STATES = select(*_STATE_COLS).where(_ST.trial_id.in_(bindparam("tids", expanding=True)))
_STATES_ONE = DriverStatement(select(*_STATE_COLS).where(_ST.trial_id == bindparam("tid")))
_TAIL = (
    select(_M.steps_completed, _M.timestamp, _M.payload)
    .where(
        _M.trial_id == bindparam("tid"),
        _M.metric_group == bindparam("group"),
        _M.steps_completed >= bindparam("steps"),
        _M.id > bindparam("id"),
        _M.superseded == false(),
    )
    .order_by(_M.steps_completed, _M.id)
)
_READ_STATES = select(_ST.trial_id, _ST.complete, _ST.last_steps, _ST.last_id).where(
    _ST.trial_id.in_(bindparam("tids", expanding=True)), _ST.metric_group == bindparam("group")
)
_SEGMENTS_DELETE = delete(_S).where(
    _S.trial_id == bindparam("tid"), _S.metric_group == bindparam("group")
)
_SET_LAST_ID = (
    update(_ST)
    .where(_ST.trial_id == bindparam("b_trial"), _ST.metric_group == bindparam("b_group"))
    .values(
        last_id=select(func.max(_M.id))
        .where(
            _M.trial_id == bindparam("b_trial"),
            _M.metric_group == bindparam("b_group"),
            _M.steps_completed >= bindparam("b_steps"),
            _M.superseded == false(),
        )
        .scalar_subquery()
    )
)
_TAIL_WHERE = (
    _S.trial_id == bindparam("tid"),
    _S.metric_group == bindparam("group"),
    _S.name == bindparam("name"),
    _S.seq >= bindparam("seq"),
)
_TAIL_SELECT = select(_S.vals, _S.steps, _S.times).where(*_TAIL_WHERE).order_by(_S.seq)
_TAIL_DELETE = delete(_S).where(*_TAIL_WHERE)
_STATE_INSERT = insert(_ST)
_SEGMENT_INSERT = insert(_S)
_STATE_UPDATE = (
    update(_ST)
    .where(_ST.trial_id == bindparam("b_trial"), _ST.metric_group == bindparam("b_group"))
    .values(
        complete=bindparam("complete"),
        last_steps=bindparam("last_steps"),
        last_id=bindparam("last_id"),
        next_seq=bindparam("next_seq"),
        tails=bindparam("tails"),
    )
)


def _has_points(conn: Connection, trial_id: int, group: str) -> bool:
    """Whether (trial, group) has points that are not superseded (an index probe)."""
    return conn.execute(_HAS_POINTS, {"tid": trial_id, "group": group}).first() is not None


def _tail_rows(conn: Connection, trial_id: int, group: str, last_steps: int, last_id: int) -> Any:
    """Rows of (trial, group) stored after its segments: ``(steps, timestamp, payload)`` in
    ``(steps, id)`` order (through the index on (trial, group, steps, id))."""
    return conn.execute(
        _TAIL, {"tid": trial_id, "group": group, "steps": last_steps, "id": last_id}
    ).all()


def append(
    conn: Connection,
    new: dict[tuple[int, str], list[MetricReport]],
    pending: dict[tuple[int, str], int],
) -> list[dict[str, Any]]:
    """Keep the series of one commit's points; call before they are inserted in ``metrics``.

    Points are not written to segments one commit at a time: a series' newest points are read
    from ``metrics`` (its *tail*: steps at or after ``last_steps``, ids after ``last_id``),
    and once about :data:`EXTEND_AT` have gathered, the commit that brings more moves them
    into a segment (the tail read back, the commit's own points taken from ``new``).

    Args:
        conn: The commit's connection (the trial rows are locked by the caller).
        new: Per (trial, group), its new reports in the order they are inserted (their ids).
        pending: Per (trial, group), the points stored since its last segment, as far as this
            process knows (decides only when to write; updated here).

    Returns:
        The (trial, group) keys whose ``last_id`` :func:`set_last_ids` must set once the
        commit's points are inserted.
    """
    if not new:
        return []
    tids = sorted({k[0] for k in new})
    states: dict[tuple[int, str], list[Any]] = {}
    if conn.dialect.name == "sqlite":  # no round trips: one trial at a time, no IN list
        rows: list[Any] = [r for t in tids for r in _STATES_ONE.rows(conn, {"tid": t})]
    else:
        rows = [
            r
            for i in range(0, len(tids), 500)
            for r in conn.execute(_STATES, {"tids": tids[i : i + 500]})
        ]
    for row in rows:
        if (row[0], row[1]) in new:
            states[(row[0], row[1])] = [bool(row[2]), row[3], row[4], row[5], row[6]]
    created: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    extended: list[dict[str, Any]] = []
    for key in sorted(new):
        tid, group = key
        reports = new[key]
        st = states.get(key)
        is_new = st is None
        if st is None:
            st = [not _has_points(conn, tid, group), -1, 0, 0, "{}"]
        elif not st[0]:
            continue  # incomplete: the next reader rebuilds it from ``metrics``
        complete, last_steps, last_id, next_seq, tails_json = st
        if complete and min(r.steps_completed for r in reports) < last_steps:
            # Points below the highest step in segments belong in the middle of the series.
            conn.execute(_SEGMENTS_DELETE, {"tid": tid, "group": group})
            complete, tails_json = False, "{}"
        elif not complete:
            pass  # a new state for points stored before it: the next reader rebuilds them
        elif pending.get(key, 0) + len(reports) < EXTEND_AT:
            pending[key] = pending.get(key, 0) + len(reports)
            if not is_new:
                continue
        else:
            # Stable by steps: the tail (ids before the commit's) first at equal steps.
            tail = _tail_rows(conn, tid, group, last_steps, last_id)
            points = _points(tail)
            points += [(r.steps_completed, r.timestamp, r.metrics) for r in reports]
            points.sort(key=_first)
            last_steps = points[-1][0]
            tails: dict[str, list[int]] = json.loads(tails_json)
            next_seq = _add_segments(
                conn, tid, group, _columns_of(points), tails, next_seq, segments
            )
            tails_json = json.dumps(tails, separators=(",", ":"))
            pending[key] = 0
            extended.append({"b_trial": tid, "b_group": group, "b_steps": last_steps})
        fields = {
            "complete": complete,
            "last_steps": last_steps,
            "last_id": last_id,
            "next_seq": next_seq,
            "tails": tails_json,
        }
        if is_new:
            created.append({"trial_id": tid, "metric_group": group, **fields})
        else:
            changed.append({"b_trial": tid, "b_group": group, **fields})
    if created:
        conn.execute(_STATE_INSERT, created)
    if segments:
        conn.execute(_SEGMENT_INSERT, segments)
    if changed:
        conn.execute(_STATE_UPDATE, changed)
    return extended


def set_last_ids(conn: Connection, extended: list[dict[str, Any]]) -> None:
    """After the commit's points are inserted: the series :func:`append` extended hold every
    point of their (trial, group) up to its last id."""
    if extended:
        conn.execute(_SET_LAST_ID, extended)


def _first(p: tuple[int, float, dict[str, float]]) -> int:
    return p[0]


def _group_of(row_and_metrics: tuple[Any, dict[str, float]]) -> str:
    return str(row_and_metrics[0][0])


def _points(rows: Sequence[Any]) -> list[tuple[int, float, dict[str, float]]]:
    """``(steps, timestamp, payload)`` rows as ``(steps, timestamp, metrics)`` points."""
    if not rows:
        return []
    decoded = decode_metrics_array([r[2] for r in rows])
    return [(r[0], r[1], d) for r, d in zip(rows, decoded, strict=True)]


def _columns_of(points: Sequence[tuple[int, float, dict[str, float]]]) -> dict[str, _Builder]:
    """Per metric name, the columns of the ``(steps, timestamp, metrics)`` points that carry
    it (a column at a time: this runs in ingestion transactions)."""
    steps: list[int] = [p[0] for p in points]
    times: list[float] = [p[1] for p in points]
    dicts = [p[2] for p in points]
    out: dict[str, _Builder] = {}
    for name in set().union(*dicts):
        vals = [d.get(name) for d in dicts]
        b = out[name] = _Builder()
        if None in vals:
            kept = [i for i, v in enumerate(vals) if v is not None]
            b.steps = array("q", [steps[i] for i in kept])
            b.times = array("d", [times[i] for i in kept])
            b.values = array("d", [vals[i] for i in kept])  # type: ignore[misc]
        else:
            b.steps = array("q", steps)
            b.times = array("d", times)
            b.values = array("d", vals)  # type: ignore[arg-type]  # no None in vals
    return out


def _add_segments(
    conn: Connection,
    tid: int,
    group: str,
    by_name: dict[str, _Builder],
    tails: dict[str, list[int]],
    next_seq: int,
    segments: list[dict[str, Any]],
) -> int:
    """Queue one new segment per name in ``segments``, merging a name's unsealed segments
    once they number :data:`TAIL_SEGMENTS`; returns the next free seq."""
    for name in sorted(by_name):
        cols = by_name[name]
        seq = next_seq
        next_seq += 1
        tail = tails.get(name)
        if tail is None:
            segments.append(_segment(tid, group, name, seq, cols))
            if len(cols) < SEAL_POINTS:
                tails[name] = [seq, 1, len(cols)]
            continue
        tail[1] += 1
        tail[2] += len(cols)
        if tail[1] < TAIL_SEGMENTS:
            segments.append(_segment(tid, group, name, seq, cols))
            continue
        merged = _merge_tail(conn, tid, group, name, tail[0], cols)
        segments.append(_segment(tid, group, name, seq, merged))
        if len(merged) >= SEAL_POINTS:
            del tails[name]
        else:
            tails[name] = [seq, 1, len(merged)]
    return next_seq


def _merge_tail(
    conn: Connection, trial_id: int, group: str, name: str, first_seq: int, new: _Builder
) -> _Builder:
    """The unsealed segments of a series from ``first_seq`` on, and ``new`` after them, as one
    (the old segments are deleted)."""
    key = {"tid": trial_id, "group": group, "name": name, "seq": first_seq}
    rows = conn.execute(_TAIL_SELECT, key).all()
    conn.execute(_TAIL_DELETE, key)
    out = _Builder()
    out.values = unpack_column("d", [r[0] for r in rows])
    out.steps = unpack_column("q", [r[1] for r in rows])
    out.times = unpack_column("d", [r[2] for r in rows])
    out.values.extend(new.values)
    out.steps.extend(new.steps)
    out.times.extend(new.times)
    return out


def rebuild(conn: Connection, trial_id: int, groups: Sequence[str] | None = None) -> None:
    """Rewrite the series of ``trial_id`` (of ``groups``; None: every group) from ``metrics``
    and mark them complete.

    Args:
        conn: A write transaction's connection.
        trial_id: The trial.
        groups: The groups to rebuild; None rebuilds every group (and forgets the series of
            groups that no longer have points).
    """
    sel = select(_M.metric_group, _M.steps_completed, _M.timestamp, _M.payload, _M.id).where(
        _M.trial_id == trial_id, _M.superseded == false()
    )
    gone = delete(_S).where(_S.trial_id == trial_id)
    gone_state = delete(_ST).where(_ST.trial_id == trial_id)
    if groups is not None:
        sel = sel.where(_M.metric_group.in_(groups))
        gone = gone.where(_S.metric_group.in_(groups))
        gone_state = gone_state.where(_ST.metric_group.in_(groups))
    conn.execute(gone)
    conn.execute(gone_state)
    rows = conn.execute(
        sel.order_by(_M.metric_group, _M.steps_completed, _M.id).execution_options(
            yield_per=_REBUILD_CHUNK
        )
    )
    series: dict[str, dict[str, _Builder]] = {}
    last: dict[str, int] = {}
    last_id: dict[str, int] = {}
    for chunk in rows.partitions():
        decoded = decode_metrics_array([r[3] for r in chunk])
        for group, run in itertools.groupby(zip(chunk, decoded, strict=True), key=_group_of):
            part = list(run)
            by_name = series.setdefault(group, {})
            last[group] = part[-1][0][1]
            last_id[group] = max(last_id.get(group, 0), max(r[4] for r, _ in part))
            for name, cols in _columns_of([(r[1], r[2], d) for r, d in part]).items():
                b = by_name.get(name)
                if b is None:
                    by_name[name] = cols
                else:
                    b.steps.extend(cols.steps)
                    b.times.extend(cols.times)
                    b.values.extend(cols.values)
    states = []
    segments = []
    for group in groups if groups is not None else sorted(series):
        seq = 0
        for name, cols in sorted(series.get(group, {}).items()):
            for lo in range(0, len(cols), SEAL_POINTS):
                segments.append(
                    _segment(trial_id, group, name, seq, cols, lo, min(lo + SEAL_POINTS, len(cols)))
                )
                seq += 1
        states.append(
            {
                "trial_id": trial_id,
                "metric_group": group,
                "complete": True,
                "last_steps": last.get(group, -1),
                "last_id": last_id.get(group, 0),
                "next_seq": seq,
                "tails": "{}",
            }
        )
    for i in range(0, len(segments), 100):
        conn.execute(insert(_S), segments[i : i + 100])
    if states:
        conn.execute(insert(_ST), states)


def read(
    conn: Connection, trial_ids: Sequence[int], group: str, names: Sequence[str]
) -> tuple[dict[int, dict[str, SeriesColumns]], list[int]]:
    """The complete series of ``trial_ids`` in ``group`` (``names``; empty: every name).

    Returns:
        Per trial whose series are complete, its columns by name (names sorted; a name without
        points is absent); and the trials whose series must be rebuilt first.
    """
    ids = sorted(set(trial_ids))
    complete: dict[int, tuple[int, int]] = {}  # trial -> (last_steps, last_id)
    known: set[int] = set()
    for i in range(0, len(ids), 500):
        for tid, ok, last_steps, last_id in conn.execute(
            _READ_STATES, {"tids": ids[i : i + 500], "group": group}
        ):
            known.add(tid)
            if ok:
                complete[tid] = (last_steps, last_id)
    stale = [t for t in ids if t not in complete and (t in known or _has_points(conn, t, group))]
    out: dict[int, dict[str, SeriesColumns]] = {t: {} for t in ids if t not in stale}
    want = sorted(complete)
    wanted = sorted(set(names))
    blobs: dict[tuple[int, str], tuple[list[bytes], list[bytes], list[bytes]]] = {}
    for i in range(0, len(want), 100):
        stmt = select(_S.trial_id, _S.name, _S.vals, _S.steps, _S.times).where(
            _S.trial_id.in_(want[i : i + 100]), _S.metric_group == group
        )
        if names:
            stmt = stmt.where(_S.name.in_(wanted))
        for tid, name, v, s, t in conn.execute(stmt.order_by(_S.trial_id, _S.name, _S.seq)):
            b = blobs.get((tid, name))
            if b is None:
                b = blobs[(tid, name)] = ([], [], [])
            b[0].append(v)
            b[1].append(s)
            b[2].append(t)
    for (tid, name), (vs, ss, ts) in blobs.items():
        out[tid][name] = SeriesColumns(
            unpack_column("q", ss), unpack_column("d", ts), unpack_column("d", vs)
        )
    for tid in want:  # then each series' tail, read from ``metrics``
        rows = _tail_rows(conn, tid, group, *complete[tid])
        if not rows:
            continue
        points = _points(rows)
        by_name = out[tid]
        for name, cols in _columns_of(points).items():
            if names and name not in wanted:
                continue
            c = by_name.get(name)
            if c is None:
                by_name[name] = SeriesColumns(cols.steps, cols.times, cols.values)
            else:
                c.steps.extend(cols.steps)
                c.times.extend(cols.times)
                c.values.extend(cols.values)
        out[tid] = dict(sorted(by_name.items()))
    return out, stale
