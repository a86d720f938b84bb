"""Metric series kept as columns: each (trial, group, metric name)'s points, ready for a chart.

A chart of 100 trials x 10k points read from ``metrics`` decodes a million rows (about a
second on SQLite before any work). So the store also keeps, per (trial, group, name), the
points that a chart read sees (not superseded, in ``(steps_completed, id)`` order, those that
carry the name) as three packed columns: steps (int64), timestamps and values (float64), in
``metric_series`` rows ("segments") read back with a few ``frombytes``. Nothing is lost, so a
reader computes exactly what it would from ``metrics`` (any ``max_points``, or every point).

Kept up to date in the transaction that stores the points (:func:`append`): each commit adds
one segment per (trial, group, name) it touches; when a series' unsealed segments number
:data:`TAIL_SEGMENTS` they are merged into one, sealed once it holds :data:`SEAL_POINTS`, so
a series stays a few rows and ingestion rewrites each point a bounded number of times.

``metric_series_state`` says, per (trial, group), whether its segments are *complete*. A
series cannot be appended to, and is rebuilt from ``metrics`` (:func:`rebuild`) instead, when:

* a commit brings points at a step below the highest one kept (the new points would go in
  the middle);
* a restart from a checkpoint supersedes points (:meth:`SQLStore.supersede_metrics` rebuilds
  the trial's series in its own transaction);
* points were stored before this table existed (no state row, but rows in ``metrics``).

The first two mark the state incomplete; readers rebuild incomplete series when they meet them
(:meth:`SQLStore.metric_series`).
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, false, insert, select, update

from determined_sdk.metrics_wire import decode_metrics_array
from master_server.domain import MetricReport, SeriesColumns
from master_server.store.models import MetricRow, MetricSeriesRow, MetricSeriesStateRow

#: Unsealed segments of one series that trigger a merge.
TAIL_SEGMENTS = 32
#: Points from which a merged segment is sealed (never rewritten again).
SEAL_POINTS = 4096
#: Reports decoded at a time by a rebuild.
_REBUILD_CHUNK = 20_000

_S = MetricSeriesRow
_ST = MetricSeriesStateRow
_M = MetricRow
_BIG = sys.byteorder == "big"


def _pack(a: array[Any]) -> bytes:
    """Little-endian bytes of ``a`` (the stored form on every machine)."""
    if _BIG:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _unpack(typecode: str, blobs: Iterable[bytes]) -> array[Any]:
    a: array[Any] = array(typecode)
    a.frombytes(b"".join(bytes(b) for b in blobs))
    if _BIG:
        a.byteswap()
    return a


class _Builder:
    """Columns of one series being assembled (by a rebuild or one commit's points)."""

    __slots__ = ("steps", "times", "values")

    def __init__(self) -> None:
        self.steps: array[int] = array("q")
        self.times: array[float] = array("d")
        self.values: array[float] = array("d")

    def __len__(self) -> int:
        return len(self.values)

    def add(self, steps: int, time: float, value: float) -> None:
        self.steps.append(steps)
        self.times.append(time)
        self.values.append(value)


def _steps_of(r: MetricReport) -> int:
    return r.steps_completed


def _columns_of(reports: Sequence[MetricReport]) -> dict[str, _Builder]:
    """Per metric name, the columns of the reports that carry it (a column at a time: this
    runs in every ingestion transaction)."""
    steps: list[int] = [r.steps_completed for r in reports]
    times: list[float] = [r.timestamp for r in reports]
    dicts = [r.metrics for r in reports]
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
        "vals": _pack(cols.values[lo:hi]),
        "steps": _pack(cols.steps[lo:hi]),
        "times": _pack(cols.times[lo:hi]),
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
_STATES = select(
    _ST.trial_id, _ST.metric_group, _ST.complete, _ST.last_steps, _ST.next_seq, _ST.tails
).where(_ST.trial_id.in_(bindparam("tids", expanding=True)))
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
        next_seq=bindparam("next_seq"),
        tails=bindparam("tails"),
    )
)


def _has_points(conn: Connection, trial_id: int, group: str) -> bool:
    """Whether (trial, group) has points that are not superseded (an index probe)."""
    return conn.execute(_HAS_POINTS, {"tid": trial_id, "group": group}).first() is not None


def append(conn: Connection, new: dict[tuple[int, str], list[MetricReport]]) -> None:
    """Add one commit's points to their series; call before they are inserted in ``metrics``.

    Args:
        conn: The commit's connection (the trial rows are locked by the caller).
        new: Per (trial, group), its new reports in the order they are inserted (their ids).
    """
    if not new:
        return
    tids = sorted({k[0] for k in new})
    states: dict[tuple[int, str], list[Any]] = {}
    for i in range(0, len(tids), 500):
        for row in conn.execute(_STATES, {"tids": tids[i : i + 500]}):
            if (row[0], row[1]) in new:
                states[(row[0], row[1])] = [bool(row[2]), row[3], row[4], json.loads(row[5])]
    created: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    for key in sorted(new):
        tid, group = key
        reports = new[key]
        st = states.get(key)
        is_new = st is None
        if st is None:
            st = [not _has_points(conn, tid, group), -1, 0, {}]
        elif not st[0]:
            continue  # incomplete: the next reader rebuilds it from ``metrics``
        first = min(r.steps_completed for r in reports)
        if st[0] and first < st[1]:
            # Points below the highest step kept belong in the middle of the series.
            conn.execute(delete(_S).where(_S.trial_id == tid, _S.metric_group == group))
            st[0], st[3] = False, {}
        if st[0]:
            # Stable by steps: equal steps keep their insertion (id) order.
            ordered = sorted(reports, key=_steps_of)
            by_name = _columns_of(ordered)
            st[1] = max(st[1], ordered[-1].steps_completed)
            tails: dict[str, list[int]] = st[3]
            for name in sorted(by_name):
                cols = by_name[name]
                seq = st[2]
                st[2] += 1
                segments.append(_segment(tid, group, name, seq, cols))
                tail = tails.get(name)
                if tail is None:
                    if len(cols) < SEAL_POINTS:
                        tails[name] = [seq, 1, len(cols)]
                    continue
                tail[1] += 1
                tail[2] += len(cols)
                if tail[1] >= TAIL_SEGMENTS:
                    segments.pop()  # merged below with the segments before it
                    merged = _merge_tail(conn, tid, group, name, tail[0], cols)
                    segments.append(_segment(tid, group, name, seq, merged))
                    if len(merged) >= SEAL_POINTS:
                        del tails[name]
                    else:
                        tails[name] = [seq, 1, len(merged)]
        fields = {
            "complete": st[0],
            "last_steps": st[1],
            "next_seq": st[2],
            "tails": json.dumps(st[3], separators=(",", ":")),
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


def _merge_tail(
    conn: Connection, trial_id: int, group: str, name: str, first_seq: int, new: _Builder
) -> _Builder:
    """The unsealed segments of a series from ``first_seq`` on, and ``new`` after them, as one
    (the old segments are deleted)."""
    key = {"tid": trial_id, "group": group, "name": name, "seq": first_seq}
    rows = conn.execute(_TAIL_SELECT, key).all()
    conn.execute(_TAIL_DELETE, key)
    out = _Builder()
    out.values = _unpack("d", [r[0] for r in rows])
    out.steps = _unpack("q", [r[1] for r in rows])
    out.times = _unpack("d", [r[2] for r in rows])
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
    sel = select(_M.metric_group, _M.steps_completed, _M.timestamp, _M.payload).where(
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
    for chunk in rows.partitions():
        decoded = decode_metrics_array([r[3] for r in chunk])
        for (group, steps, time, _), metrics in zip(chunk, decoded, strict=True):
            by_name = series.get(group)
            if by_name is None:
                by_name = series[group] = {}
            last[group] = steps
            for name, v in metrics.items():
                b = by_name.get(name)
                if b is None:
                    b = by_name[name] = _Builder()
                b.add(steps, time, v)
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
    complete: set[int] = set()
    known: set[int] = set()
    for i in range(0, len(ids), 500):
        for tid, ok in conn.execute(
            select(_ST.trial_id, _ST.complete).where(
                _ST.trial_id.in_(ids[i : i + 500]), _ST.metric_group == group
            )
        ):
            known.add(tid)
            if ok:
                complete.add(tid)
    stale = [t for t in ids if t not in complete and (t in known or _has_points(conn, t, group))]
    out: dict[int, dict[str, SeriesColumns]] = {t: {} for t in ids if t not in stale}
    want = sorted(complete)
    blobs: dict[tuple[int, str], tuple[list[bytes], list[bytes], list[bytes]]] = {}
    for i in range(0, len(want), 100):
        stmt = select(_S.trial_id, _S.name, _S.vals, _S.steps, _S.times).where(
            _S.trial_id.in_(want[i : i + 100]), _S.metric_group == group
        )
        if names:
            stmt = stmt.where(_S.name.in_(sorted(set(names))))
        for tid, name, v, s, t in conn.execute(stmt.order_by(_S.trial_id, _S.name, _S.seq)):
            b = blobs.get((tid, name))
            if b is None:
                b = blobs[(tid, name)] = ([], [], [])
            b[0].append(v)
            b[1].append(s)
            b[2].append(t)
    for (tid, name), (vs, ss, ts) in blobs.items():
        out[tid][name] = SeriesColumns(_unpack("q", ss), _unpack("d", ts), _unpack("d", vs))
    return out, stale
