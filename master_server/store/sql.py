"""The SQL store: one implementation of :class:`~master_server.store.base.Store` for SQLite
files and PostgreSQL.

Design notes (the contract itself is in :mod:`master_server.store.base`):

* **Connections.** One SQLAlchemy :class:`~sqlalchemy.engine.Engine` with a connection pool;
  every store call checks out a connection, runs one transaction and returns it. Statements
  are SQLAlchemy 2.0 Core statements over the tables of :mod:`master_server.store.models`.
  Inside :meth:`SQLStore.transaction` a thread's calls share that block's connection and
  transaction instead (each write in a savepoint of it).
* **SQLite.** Each new DB-API connection is put in WAL mode with ``synchronous=NORMAL``,
  foreign keys on and a busy timeout. The store issues ``BEGIN`` itself: reads run in a
  deferred transaction (WAL readers never block), writes in ``BEGIN IMMEDIATE`` while holding
  a process-local lock, so writer threads queue in Python instead of failing with "database
  is locked", and other processes on the same file are held off by SQLite's own lock.
* **PostgreSQL.** Plain READ COMMITTED transactions; read-modify-write paths (metric summary,
  latest checkpoint, model version numbers) lock the parent row with ``SELECT ... FOR UPDATE``
  and unique constraints back up every "already exists" check.
* **Metrics.** One row per report: ``(trial_id, metric_group, steps_completed, timestamp,
  payload)`` where the payload is compact JSON ``{name: value}`` with NaN and +/-infinity
  written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. A batch is folded into
  per-metric partial statistics outside the lock; inside the transaction the trial's summary
  is read, merged and written back together with the executemany insert of the reports.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    false,
    func,
    insert,
    literal_column,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.pool import StaticPool

from determined_sdk.errors import (
    AlreadyExistsError,
    DeterminedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from master_server.domain import (
    Checkpoint,
    CheckpointState,
    Experiment,
    ExperimentFilter,
    ExperimentState,
    ExperimentSummaryRow,
    JSONDict,
    LogLine,
    LogQuery,
    MetricColumns,
    MetricPoint,
    MetricQuery,
    MetricReport,
    Model,
    ModelVersion,
    NewExperiment,
    PendingJob,
    Project,
    RemovalTarget,
    SearcherLog,
    SeriesColumns,
    Trial,
    TrialState,
    Workspace,
)
from master_server.store import metric_series
from master_server.store.base import _UNSET, Store
from master_server.store.metrics_read import read_metric_columns
from master_server.store.models import (
    CheckpointRow,
    ExperimentLabelRow,
    ExperimentRow,
    LogBatchRow,
    LogRow,
    MetricBatchRow,
    MetricRow,
    MetricSeriesStateRow,
    ModelRow,
    ModelVersionRow,
    PendingJobRow,
    ProjectRow,
    ResourceOwnerRow,
    SearcherEventRow,
    SearcherStateRow,
    TrialRow,
    UserRow,
    WorkspaceRow,
)
from master_server.store.prepared import DriverStatement, fetch_rows
from master_server.store.sql_auth import AuthSQLMixin

__all__ = ["DEFAULT_PROJECT_ID", "DEFAULT_WORKSPACE_ID", "SQLStore", "summary_key"]

DEFAULT_WORKSPACE_ID = 1
DEFAULT_PROJECT_ID = 1
DEFAULT_NAME = "Uncategorized"

_MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: A result row of any shape (rows are mapped to domain values by position).
_AnyRow: TypeAlias = "Row[*tuple[Any, ...]]"
_R = TypeVar("_R")

# -- JSON helpers ------------------------------------------------------------------------------

_LOOSE = json.JSONEncoder(separators=(",", ":"))
_STRICT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_INF = math.inf
_JSON_DECODE = json.JSONDecoder().decode


def _dumps(value: Any) -> str:
    return _LOOSE.encode(value)


def _enc_float(v: float) -> float | str:
    """A float as JSON can hold it: non-finite values become strings."""
    if v != v:
        return "NaN"
    if v == _INF:
        return "Infinity"
    if v == -_INF:
        return "-Infinity"
    return v


def _dec_float(v: Any) -> Any:
    return float(v) if isinstance(v, str) else v


_KEY_JSON: dict[str, str] = {}  # metric name -> its JSON string; names repeat in every report


def _encode_metrics(metrics: dict[str, float]) -> str:
    """``{name: value}`` as compact JSON, non-finite values as strings.

    This is the hot path of ingestion: floats are written with ``repr`` (the shortest string
    that reads back to the same float, and valid JSON for finite values) and each name's JSON
    is cached, about three times cheaper than ``json`` for the usual few-metric report.
    """
    parts = []
    for k, v in metrics.items():
        kj = _KEY_JSON.get(k)
        if kj is None:
            kj = _STRICT.encode(k)
            if len(_KEY_JSON) < 100_000:
                _KEY_JSON[k] = kj
        if type(v) is not float:
            v = float(v)
        if v - v == 0.0:  # finite (NaN and +/-inf give NaN)
            parts.append(f"{kj}:{v!r}")
        else:
            parts.append(f'{kj}:"{_enc_float(v)}"')
    return "{" + ",".join(parts) + "}"


def _decode_metrics(payload: str) -> dict[str, float]:
    out: dict[str, float] = _JSON_DECODE(payload)
    if '"NaN"' in payload or 'Infinity"' in payload:
        for k, v in out.items():
            if isinstance(v, str):
                out[k] = float(v)
    return out


_STAT_FLOATS = ("min", "max", "last", "mean")


def _decode_summary(raw: str) -> JSONDict:
    summary: JSONDict = json.loads(raw)
    for group in summary.values():
        for stats in group.values():
            for k in _STAT_FLOATS:
                v = stats.get(k)
                if isinstance(v, str):
                    stats[k] = float(v)
    return summary


_SUMMARY_KEYS = {"training": "avg_metrics", "validation": "validation_metrics"}
#: Reports decoded at a time when a trial's summary is rebuilt (after a supersession).
_SUMMARY_CHUNK = 10_000


def summary_key(group: str) -> str:
    """The key of ``summary_metrics`` that holds the statistics of metric group ``group``.

    Args:
        group: A metric group name such as ``"training"``.

    Returns:
        ``"avg_metrics"`` for training, ``"validation_metrics"`` for validation, else ``group``.
    """
    return _SUMMARY_KEYS.get(group, group)


# Partial statistics of one metric within one batch: [min, max, last, count, n_non_nan, sum].
_Partial = dict[str, dict[str, list[Any]]]


def _merge_summary(summary: JSONDict, aux: JSONDict, partial: _Partial) -> None:
    """Fold one batch's partial statistics into the stored (JSON-encoded) summary, in place."""
    for key, names in partial.items():
        s_group = summary.setdefault(key, {})
        a_group = aux.setdefault(key, {})
        for name, (mn, mx, last, count, n, total) in names.items():
            cur = s_group.get(name)
            acc = a_group.get(name)
            if cur is not None and acc is not None:
                count += cur["count"]
                n += acc[0]
                total = _dec_float(acc[1]) + total
                old_min = _dec_float(cur["min"])
                old_max = _dec_float(cur["max"])
                if old_min is not None and old_min < mn:
                    mn = old_min
                if old_max is not None and old_max > mx:
                    mx = old_max
            if n:
                s_group[name] = {
                    "min": _enc_float(mn),
                    "max": _enc_float(mx),
                    "last": _enc_float(last),
                    "count": count,
                    "mean": _enc_float(total / n),
                }
            else:  # only NaN values so far: nothing to take a min, max or mean of
                s_group[name] = {
                    "min": None,
                    "max": None,
                    "last": _enc_float(last),
                    "count": count,
                    "mean": None,
                }
            a_group[name] = [n, _enc_float(total)]


def _pk(result: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT just wrote."""
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - every insert here writes one row
        raise RuntimeError("insert returned no primary key")
    return int(key[0])


def _fold_batch(by_group: dict[str, list[dict[str, float]]]) -> tuple[_Partial, bool]:
    """Partial statistics of one batch, per summary key and metric name.

    Returns:
        The statistics and whether some value was an ``int`` (to be stored as a float).

    Raises:
        InvalidArgumentError: A value is not a number or a metric name is not a string.
    """
    partial: _Partial = {}
    convert = False
    for group, dicts in by_group.items():
        stats = partial.setdefault(_SUMMARY_KEYS.get(group, group), {})
        names = dict.fromkeys(itertools.chain.from_iterable(dicts))
        for name in names:
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(f"metric names must be non-empty strings: {name!r}")
            vals = [m[name] for m in dicts if name in m]
            if set(map(type, vals)) != _FLOAT_ONLY:
                for v in vals:
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        raise InvalidArgumentError(
                            f"metric {name!r} must be a number, got {type(v).__name__}"
                        )
                vals = [float(v) for v in vals]
                convert = True
            finite = [v for v in vals if v == v]  # NaN counts in count and last only
            if finite:
                st = [min(finite), max(finite), vals[-1], len(vals), len(finite), sum(finite)]
            else:
                st = [_INF, -_INF, vals[-1], len(vals), 0, 0.0]
            stats[name] = st
    return partial, convert


def _prepare_batch(
    trial_id: int, batch_id: str, reports: Sequence[MetricReport], run_id: int
) -> tuple[list[tuple[Any, ...]], _Partial, int]:
    """Check one batch (reported by run ``run_id``, 0 = unknown) and turn it into metric rows,
    partial summary statistics and its highest step (all before any database work).

    Raises:
        InvalidArgumentError: An empty batch id, group or metric name, a negative step, or a
            value that is not a number.
    """
    if not isinstance(batch_id, str) or not batch_id:
        raise InvalidArgumentError(f"batch_id must be a non-empty string, got {batch_id!r}")
    by_group: dict[str, list[dict[str, float]]] = {}
    max_steps = -1
    for rep in reports:
        group = rep.group
        steps = rep.steps_completed
        if type(steps) is not int or steps < 0:
            raise InvalidArgumentError(f"steps_completed must be an int >= 0: {rep!r}")
        if steps > max_steps:
            max_steps = steps
        dicts = by_group.get(group)
        if dicts is None:
            if not isinstance(group, str) or not group:
                raise InvalidArgumentError(f"metric group must be a non-empty string: {rep!r}")
            dicts = by_group[group] = []
        dicts.append(rep.metrics)
    partial, convert = _fold_batch(by_group)
    enc = _encode_metrics
    if convert:  # some values were ints: store them as the floats they stand for
        rows = [
            (
                trial_id,
                r.group,
                r.steps_completed,
                r.timestamp,
                enc({k: float(v) for k, v in r.metrics.items()}),
                run_id,
            )
            for r in reports
        ]
    else:
        rows = [
            (trial_id, r.group, r.steps_completed, r.timestamp, enc(r.metrics), run_id)
            for r in reports
        ]
    return rows, partial, max_steps


_FLOAT_ONLY = {float}
_METRICS_INSERT_SQLITE = (
    "INSERT INTO metrics (trial_id, metric_group, steps_completed, timestamp, payload, run_id) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_METRICS_COPY_PG = (
    "COPY metrics (trial_id, metric_group, steps_completed, timestamp, payload, run_id) FROM STDIN"
)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"{kind} name must be a non-empty string, got {name!r}")
    return name


def _dedup(labels: Iterable[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for label in labels:
        if not isinstance(label, str) or not label:
            raise InvalidArgumentError(f"labels must be non-empty strings, got {label!r}")
        out[label] = None
    return tuple(out)


# -- engine setup --------------------------------------------------------------------------------


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let the store emit BEGIN itself (pysqlite's implicit transactions get in the way).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


#: A pooled PostgreSQL connection idle longer than this is checked before it is used again.
PING_IDLE_S = 10.0


def _ping_idle_connections(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for :data:`PING_IDLE_S`.

    A connection PostgreSQL dropped while the master was idle (a server restart, an idle
    timeout) is then replaced before a request sees it. A ping on every checkout (SQLAlchemy's
    ``pool_pre_ping``) costs each store call a round trip: about 200 us of 680 us for a
    ``get_trial``. A connection that breaks while busy fails its one request (answered
    UNAVAILABLE, which clients retry) and SQLAlchemy invalidates the pool's older connections.
    """

    @event.listens_for(engine, "checkin")
    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get("checked_in")
        if last is None or time.monotonic() - last < PING_IDLE_S:
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            dbapi_conn.rollback()
        except Exception as e:  # the pool discards it and checks out another
            raise DisconnectionError(f"an idle database connection was dropped: {e}") from e


#: Rows are read by position or by name, never keyed by column object, so a statement built
#: anew and served by the compiled cache need not have its columns matched to the cached
#: statement's (SQLAlchemy's "adapt to context", which the ORM turns off the same way): that
#: match cost about 20 us per column, 0.4 ms of a 0.9 ms ``get_experiment``.
_ENGINE_OPTIONS = {"_result_disable_adapt_to_context": True}


def _make_engine(url: str) -> Engine:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.database in (None, "", ":memory:"):
            engine = create_engine(
                u,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
                execution_options=_ENGINE_OPTIONS,
            )
        else:
            engine = create_engine(
                u,
                pool_size=8,
                max_overflow=56,
                pool_timeout=120,
                connect_args={"check_same_thread": False, "timeout": 30},
                execution_options=_ENGINE_OPTIONS,
            )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        engine = create_engine(u, pool_size=8, max_overflow=24, execution_options=_ENGINE_OPTIONS)
        _ping_idle_connections(engine)
        return engine
    raise InvalidArgumentError(f"unsupported database URL {u.render_as_string()!r}")


# -- column sets and row mapping -------------------------------------------------------------

E = ExperimentRow
T = TrialRow
C = CheckpointRow

_NUM_TRIALS = select(func.count()).where(T.experiment_id == E.id).correlate(E).scalar_subquery()
_EXP_COLS = (
    E.id,
    E.name,
    E.description,
    E.labels,
    E.config,
    E.original_config,
    E.state,
    E.archived,
    E.progress,
    E.project_id,
    ProjectRow.workspace_id,
    E.start_time,
    E.end_time,
    E.searcher_name,
    _NUM_TRIALS.label("num_trials"),
    E.unmanaged,
    E.error,
    E.notes,
)


def _exp_select() -> Select[Any]:
    return select(*_EXP_COLS).join(ProjectRow, ProjectRow.id == E.project_id)


_EXP_BY_ID = _exp_select().where(E.id == bindparam("id"))


# The same columns with the two config columns left out (``ExperimentFilter.full=False``).
_EXP_SUMMARY_COLS: tuple[Any, ...] = tuple(
    literal_column("'{}'")
    if c is E.config
    else literal_column("''")
    if c is E.original_config
    else c
    for c in _EXP_COLS
)


_EXP_INSERT = insert(E)
_LABEL_INSERT = insert(ExperimentLabelRow)
_SEARCHER_STATE_INSERT = insert(SearcherStateRow)
_PROJECT_WORKSPACE = select(ProjectRow.workspace_id).where(ProjectRow.id == bindparam("project_id"))

# Statements of the metric ingestion path, built once: building a statement per call and
# matching its columns to the cached compiled form cost 3-5x the statement's execution.
_LAST_CHECKPOINT_STEP = (
    select(func.max(C.steps_completed)).where(C.trial_id == T.id).correlate(T).scalar_subquery()
)
_SUMMARY_COLS = (
    T.id,
    T.summary_metrics,
    T.summary_state,
    T.steps_completed,
    _LAST_CHECKPOINT_STEP,  # checkpoints whose metrics a new report may change
)
_TRIAL_SUMMARIES = (
    select(*_SUMMARY_COLS)
    .where(T.id.in_(bindparam("ids", expanding=True)))
    .order_by(T.id)
    .with_for_update()
)
_BATCHES_SEEN = select(MetricBatchRow.trial_id, MetricBatchRow.batch_id).where(
    tuple_(MetricBatchRow.trial_id, MetricBatchRow.batch_id).in_(bindparam("pairs", expanding=True))
)
# On SQLite (no round trips) one trial or one batch at a time, on the driver's cursor: a
# statement costs SQLite 3-5 us there, SQLAlchemy's execution of it about 50 us.
_TRIAL_SUMMARY_ONE = DriverStatement(select(*_SUMMARY_COLS).where(T.id == bindparam("id")))
_BATCH_SEEN_ONE = DriverStatement(
    select(MetricBatchRow.trial_id).where(
        MetricBatchRow.trial_id == bindparam("tid"), MetricBatchRow.batch_id == bindparam("bid")
    )
)
_BATCH_INSERT = DriverStatement(
    insert(MetricBatchRow).values(trial_id=bindparam("tid"), batch_id=bindparam("bid"))
)
_TRIAL_SUMMARY_UPDATE = DriverStatement(
    update(cast(Table, TrialRow.__table__))
    .where(cast(Table, TrialRow.__table__).c.id == bindparam("tid"))
    .values(
        summary_metrics=bindparam("b_summary"),
        summary_state=bindparam("b_state"),
        steps_completed=bindparam("b_steps"),
    )
)
_OWNER = ResourceOwnerRow.__table__.c
# The columns of an ``ExperimentSummaryRow``: the same without the two configs, and the owner.
_EXP_ROW_COLS = (
    *(c for c in _EXP_COLS if c is not E.config and c is not E.original_config),
    UserRow.username,
)


def _exp_rows_select() -> Select[Any]:
    # The owner by outer joins: a correlated subquery per row costs SQLite ~3x as much.
    return (
        select(*_EXP_ROW_COLS)
        .join(ProjectRow, ProjectRow.id == E.project_id)
        .outerjoin(ResourceOwnerRow, and_(_OWNER.kind == "experiment", _OWNER.resource_id == E.id))
        .outerjoin(UserRow, UserRow.id == _OWNER.user_id)
    )


def _exp_summary_select() -> Select[Any]:
    return select(*_EXP_SUMMARY_COLS).join(ProjectRow, ProjectRow.id == E.project_id)


def _to_experiment(r: _AnyRow) -> Experiment:
    return Experiment(
        id=r[0],
        name=r[1],
        description=r[2],
        labels=tuple(json.loads(r[3])),
        config=json.loads(r[4]),
        original_config=r[5],
        state=ExperimentState(r[6]),
        archived=bool(r[7]),
        progress=r[8],
        project_id=r[9],
        workspace_id=r[10],
        start_time=r[11],
        end_time=r[12],
        searcher_name=r[13],
        num_trials=r[14],
        unmanaged=bool(r[15]),
        error=r[16],
        notes=r[17] or "",
    )


_STATES = {s.value: s for s in ExperimentState}


@functools.lru_cache(maxsize=4096)
def _labels(text: str) -> tuple[str, ...]:
    # Lists repeat the same few label sets over thousands of rows: decode each set once.
    return tuple(json.loads(text))


def _to_experiment_summary(r: _AnyRow) -> Experiment:
    """:func:`_to_experiment` for a summary row (no configs): the hot path of a big list."""
    return Experiment(
        r[0],
        r[1],
        r[2],
        _labels(r[3]),
        {},
        "",
        _STATES[r[6]],
        bool(r[7]),
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        r[14],
        bool(r[15]),
        r[16],
        r[17] or "",
    )


_TRIAL_COLS = (
    T.id,
    T.experiment_id,
    T.request_id,
    T.hparams,
    T.state,
    T.summary_metrics,
    T.restarts,
    T.run_id,
    T.start_time,
    T.end_time,
    T.latest_checkpoint_uuid,
    T.warm_start_checkpoint_uuid,
    T.steps_completed,
    T.progress,
    T.exit_reason,
)

# Statements the engine runs on every event, built once: building a statement costs more
# Python than SQLite takes to run it.
_TRIAL_BY_ID = select(*_TRIAL_COLS).where(T.id == bindparam("id"))
_EXPERIMENT_STATE = select(E.state).where(E.id == bindparam("id"))
_SET_PROGRESS = (
    update(E).where(E.id == bindparam("exp_id")).values(progress=bindparam("new_progress"))
)
_APPEND_EVENT = (
    insert(SearcherEventRow)
    .values(experiment_id=bindparam("exp_id"), event=bindparam("payload"))
    .returning(SearcherEventRow.id)
)


def _to_trial(r: _AnyRow) -> Trial:
    return Trial(
        id=r[0],
        experiment_id=r[1],
        request_id=r[2],
        hparams=json.loads(r[3]),
        state=TrialState(r[4]),
        summary_metrics=_decode_summary(r[5]),
        restarts=r[6],
        run_id=r[7],
        start_time=r[8],
        end_time=r[9],
        latest_checkpoint_uuid=r[10],
        warm_start_checkpoint_uuid=r[11],
        steps_completed=r[12],
        progress=r[13],
        exit_reason=r[14],
    )


_CKPT_COLS = (
    C.uuid,
    C.trial_id,
    C.experiment_id,
    C.state,
    C.steps_completed,
    C.resources,
    C.meta,
    C.storage,
    C.report_time,
    C.training_metrics,
    C.validation_metrics,
)


# Statements of the checkpoint report path, built once (see _TRIAL_SUMMARIES).
_CKPT_BY_UUID = select(*_CKPT_COLS).where(C.uuid == bindparam("uuid"))
_CKPT_TRIAL_STEPS = select(C.trial_id, C.steps_completed).where(C.uuid == bindparam("uuid"))
_CKPT_INSERT = insert(C)
_TRIAL_EXPERIMENT_LOCKED = select(T.experiment_id).where(T.id == bindparam("id")).with_for_update()
_BEST_OTHER_CKPT_STEPS = select(func.max(C.steps_completed)).where(
    C.trial_id == bindparam("tid"), C.state == bindparam("done"), C.uuid != bindparam("uuid")
)
_SET_LATEST_CKPT = (
    update(T).where(T.id == bindparam("tid")).values(latest_checkpoint_uuid=bindparam("latest"))
)
_LATEST_CKPT = select(T.latest_checkpoint_uuid).where(T.id == bindparam("tid"))
_LAST_STEP_AT = (
    select(func.max(MetricRow.steps_completed))
    .where(
        MetricRow.trial_id == bindparam("tid"),
        MetricRow.metric_group == bindparam("group"),
        MetricRow.steps_completed <= bindparam("steps"),
        MetricRow.superseded == false(),
    )
    .scalar_subquery()
)
_PAYLOADS_AT = (
    select(MetricRow.payload)
    .where(
        MetricRow.trial_id == bindparam("tid"),
        MetricRow.metric_group == bindparam("group"),
        MetricRow.steps_completed == _LAST_STEP_AT,
        MetricRow.superseded == false(),
    )
    .order_by(MetricRow.id)
)


def _to_checkpoint(r: _AnyRow) -> Checkpoint:
    return Checkpoint(
        uuid=r[0],
        trial_id=r[1],
        experiment_id=r[2],
        state=CheckpointState(r[3]),
        steps_completed=r[4],
        resources=json.loads(r[5]),
        metadata=json.loads(r[6]),
        storage=json.loads(r[7]),
        report_time=r[8],
        training_metrics=_decode_metrics(r[9]),
        validation_metrics=_decode_metrics(r[10]),
    )


_LOG_COLS = (
    LogRow.id,
    LogRow.trial_id,
    LogRow.timestamp,
    LogRow.message,
    LogRow.rank,
    LogRow.stream,
    LogRow.level,
    LogRow.run_id,
)


def _to_log(r: _AnyRow) -> LogLine:
    return LogLine(
        id=r[0],
        trial_id=r[1],
        timestamp=r[2],
        message=r[3],
        rank=r[4],
        stream=r[5],
        level=r[6],
        run_id=r[7],
    )


_NUM_VERSIONS = (
    select(func.count())
    .where(ModelVersionRow.model_id == ModelRow.id)
    .correlate(ModelRow)
    .scalar_subquery()
)
_MODEL_COLS = (
    ModelRow.id,
    ModelRow.name,
    ModelRow.description,
    ModelRow.meta,
    ModelRow.labels,
    ModelRow.archived,
    ModelRow.creation_time,
    ModelRow.last_updated_time,
    _NUM_VERSIONS.label("num_versions"),
    ModelRow.workspace_id,
)


def _to_model(r: _AnyRow) -> Model:
    return Model(
        id=r[0],
        name=r[1],
        description=r[2],
        metadata=json.loads(r[3]),
        labels=tuple(json.loads(r[4])),
        archived=bool(r[5]),
        creation_time=r[6],
        last_updated_time=r[7],
        num_versions=r[8],
        workspace_id=r[9],
    )


MV = ModelVersionRow
_VERSION_COLS = (
    MV.id,
    MV.model_id,
    MV.version,
    MV.name,
    MV.comment,
    MV.meta,
    MV.labels,
    MV.checkpoint_uuid,
    MV.creation_time,
    MV.notes,
)


def _to_version(r: _AnyRow) -> ModelVersion:
    return ModelVersion(
        id=r[0],
        model_id=r[1],
        version=r[2],
        name=r[3],
        comment=r[4],
        metadata=json.loads(r[5]),
        labels=tuple(json.loads(r[6])),
        checkpoint_uuid=r[7],
        creation_time=r[8],
        notes=r[9] or "",
    )


_NUM_PROJECTS = (
    select(func.count())
    .where(ProjectRow.workspace_id == WorkspaceRow.id)
    .correlate(WorkspaceRow)
    .scalar_subquery()
)
_NUM_EXPERIMENTS = (
    select(func.count())
    .where(E.project_id == ProjectRow.id)
    .correlate(ProjectRow)
    .scalar_subquery()
)
_WS_COLS = (WorkspaceRow.id, WorkspaceRow.name, WorkspaceRow.archived, _NUM_PROJECTS)
_PROJECT_COLS = (
    ProjectRow.id,
    ProjectRow.name,
    ProjectRow.workspace_id,
    ProjectRow.description,
    ProjectRow.archived,
    _NUM_EXPERIMENTS,
    ProjectRow.notes,
)


def _to_workspace(r: _AnyRow) -> Workspace:
    return Workspace(id=r[0], name=r[1], archived=bool(r[2]), num_projects=r[3])


def _to_project(r: _AnyRow) -> Project:
    return Project(
        id=r[0],
        name=r[1],
        workspace_id=r[2],
        description=r[3],
        archived=bool(r[4]),
        num_experiments=r[5],
        notes=tuple((str(n), str(c)) for n, c in json.loads(r[6] or "[]")),
    )


_SORT_KEYS = {
    "id": E.id,
    "name": E.name,
    "start_time": E.start_time,
    "end_time": E.end_time,
    "state": E.state,
    "progress": E.progress,
}


def check_regex(pattern: str) -> None:
    """Raise InvalidArgumentError naming ``regex`` if ``pattern`` does not compile."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise InvalidArgumentError(f"regex: not a valid regular expression ({e})") from None


def _check_metric_query(q: MetricQuery) -> None:
    if q.page_size < 1:
        raise InvalidArgumentError(f"page_size must be >= 1, got {q.page_size}")
    for i, name in enumerate(q.names):
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"names[{i}]: must be a non-empty string, got {name!r}")
    if q.group is not None and (not isinstance(q.group, str) or not q.group):
        raise InvalidArgumentError(f"group: must be a non-empty string, got {q.group!r}")
    if q.min_steps is not None and q.max_steps is not None and q.min_steps > q.max_steps:
        raise InvalidArgumentError(
            f"min_steps ({q.min_steps}) must not be greater than max_steps ({q.max_steps})"
        )


class SQLStore(AuthSQLMixin, Store):
    """The store on a SQLAlchemy engine: SQLite files or PostgreSQL.

    Args:
        url: A SQLAlchemy URL, ``sqlite:////abs/path.db`` or ``postgresql+psycopg://...``.
            The store does not migrate on its own; call :meth:`migrate` (or use
            :func:`master_server.store.open_store`).

    Raises:
        InvalidArgumentError: The URL names a database other than SQLite or PostgreSQL.
    """

    def __init__(self, url: str) -> None:
        self._engine = _make_engine(url)
        self._dialect = self._engine.dialect.name
        self._sqlite = self._dialect == "sqlite"
        # SQLite has one writer at a time: queue writer threads here rather than in SQLite.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._sqlite else contextlib.nullcontext()
        )
        # The connection of the calling thread's open transaction(), if any.
        self._tx = threading.local()
        # Per (trial, group): points stored since its series' last segment, as far as this
        # process knows (see metric_series.append; a wrong count only moves a write).
        self._series_pending: dict[tuple[int, str], int] = {}

    # -- plumbing --------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The underlying SQLAlchemy engine (for tests and tools)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        joined: Connection | None = getattr(self._tx, "conn", None)
        if joined is not None:  # inside this thread's transaction(): see its writes
            yield joined
            return
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def _snapshot_read(self) -> Iterator[Connection]:
        """Like :meth:`_read`, with every statement seeing the same snapshot (SQLite's read
        transactions always do; PostgreSQL's READ COMMITTED would not)."""
        joined: Connection | None = getattr(self._tx, "conn", None)
        if joined is not None or self._sqlite:
            with self._read() as conn:
                yield conn
            return
        with self._engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        joined: Connection | None = getattr(self._tx, "conn", None)
        if joined is None and getattr(self._tx, "stack", None) is not None:
            joined = self._begin_joined()
        if joined is not None:
            # Part of this thread's transaction(): a savepoint, so a call that fails undoes
            # only its own part (and PostgreSQL's transaction stays usable).
            with joined.begin_nested():
                yield joined
            return
        with self._write_lock, self._engine.connect() as conn:
            if self._sqlite:
                conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    def _begin_joined(self) -> Connection:
        """Begin the open :meth:`transaction`'s write transaction (at its first write)."""
        stack: contextlib.ExitStack = self._tx.stack
        stack.enter_context(self._write_lock)
        conn = stack.enter_context(self._engine.connect())
        if self._sqlite:
            conn.execution_options(sqlite_immediate=True)
        stack.enter_context(conn.begin())
        self._tx.conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction for every store call this thread makes inside the block (see
        :meth:`Store.transaction`).

        It begins at the block's first write, not at its start: until then the block's reads
        are ordinary reads and no write lock is held, so an engine event that only reads, or
        that reads and decides (a searcher's choice) before it writes, keeps SQLite's one
        writer free for metric ingestion meanwhile.
        """
        if getattr(self._tx, "stack", None) is not None:
            yield  # joins the outer block
            return
        stack = contextlib.ExitStack()
        self._tx.stack = stack
        try:
            try:
                yield
            except BaseException as e:
                self._tx.conn = None
                if not stack.__exit__(type(e), e, e.__traceback__):
                    raise
            else:
                self._tx.conn = None
                stack.close()  # commits, if anything was written
        finally:
            self._tx.conn = None
            self._tx.stack = None

    def _upsert(self, table: Any, values: dict[str, Any], keys: list[str]) -> Any:
        ins = sqlite_insert(table) if self._sqlite else pg_insert(table)
        ins = ins.values(**values)
        return ins.on_conflict_do_update(
            index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply every Alembic migration and create the default workspace/project.

        Safe to call again (and from several processes at once): applied revisions and the
        default rows are left as they are.
        """
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS_DIR))
        # configparser interpolates "%": escape it (URLs carry %-escapes such as %3D).
        url = self._engine.url.render_as_string(hide_password=False).replace("%", "%%")
        cfg.set_main_option("sqlalchemy.url", url)
        with self._write() as conn:
            if not self._sqlite:
                # One migrator at a time across processes; released at commit.
                conn.execute(text("SELECT pg_advisory_xact_lock(74321)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            self._ensure_defaults(conn)

    def _ensure_defaults(self, conn: Connection) -> None:
        if (
            conn.scalar(select(WorkspaceRow.id).where(WorkspaceRow.id == DEFAULT_WORKSPACE_ID))
            is None
        ):
            conn.execute(
                insert(WorkspaceRow).values(
                    id=DEFAULT_WORKSPACE_ID, name=DEFAULT_NAME, archived=False
                )
            )
        if conn.scalar(select(ProjectRow.id).where(ProjectRow.id == DEFAULT_PROJECT_ID)) is None:
            conn.execute(
                insert(ProjectRow).values(
                    id=DEFAULT_PROJECT_ID,
                    workspace_id=DEFAULT_WORKSPACE_ID,
                    name=DEFAULT_NAME,
                    description="",
                    archived=False,
                )
            )
        if not self._sqlite:
            # Explicit ids do not advance PostgreSQL sequences: move them past the rows.
            for table in ("workspaces", "projects"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"GREATEST((SELECT MAX(id) FROM {table}), 1))"
                    )
                )

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    # -- existence checks ------------------------------------------------------------------
    @staticmethod
    def _need(conn: Connection, column: Any, key: Any, what: str) -> None:
        if conn.scalar(select(column).where(column == key)) is None:
            raise NotFoundError(f"{what} not found")

    def _need_experiment(self, conn: Connection, experiment_id: int) -> None:
        self._need(conn, E.id, experiment_id, f"experiment {experiment_id}")

    def _need_trial(self, conn: Connection, trial_id: int) -> None:
        self._need(conn, T.id, trial_id, f"trial {trial_id}")

    def _need_workspace(self, conn: Connection, workspace_id: int) -> None:
        self._need(conn, WorkspaceRow.id, workspace_id, f"workspace {workspace_id}")

    def _need_project(self, conn: Connection, project_id: int) -> None:
        self._need(conn, ProjectRow.id, project_id, f"project {project_id}")

    # -- workspaces and projects ----------------------------------------------------------
    def create_workspace(self, name: str) -> Workspace:
        """Create a workspace with a unique name."""
        _check_name("workspace", name)
        dup = AlreadyExistsError(f"workspace named {name!r} already exists")
        try:
            with self._write() as conn:
                if conn.scalar(select(WorkspaceRow.id).where(WorkspaceRow.name == name)):
                    raise dup
                res = conn.execute(insert(WorkspaceRow).values(name=name, archived=False))
                ws_id = _pk(res)
        except IntegrityError:
            raise dup from None
        return Workspace(id=ws_id, name=name)

    def _get_workspace(self, where: ColumnElement[bool], what: str) -> Workspace:
        with self._read() as conn:
            row = conn.execute(select(*_WS_COLS).where(where)).first()
        if row is None:
            raise NotFoundError(f"{what} not found")
        return _to_workspace(row)

    def get_workspace(self, workspace_id: int) -> Workspace:
        """The workspace with this id."""
        return self._get_workspace(WorkspaceRow.id == workspace_id, f"workspace {workspace_id}")

    def get_workspace_by_name(self, name: str) -> Workspace:
        """The workspace with this name."""
        return self._get_workspace(WorkspaceRow.name == name, f"workspace named {name!r}")

    def list_workspaces(self, name: str | None = None) -> list[Workspace]:
        """Every workspace (or only the one named ``name``), by id."""
        stmt = select(*_WS_COLS).order_by(WorkspaceRow.id)
        if name is not None:
            stmt = stmt.where(WorkspaceRow.name == name)
        with self._read() as conn:
            return [_to_workspace(r) for r in conn.execute(stmt)]

    def delete_workspace(self, workspace_id: int) -> None:
        """Delete a workspace and its (empty) projects.

        Raises:
            FailedPreconditionError: It is the default workspace, one of its projects holds
                experiments, or it holds registered models.
        """
        if workspace_id == DEFAULT_WORKSPACE_ID:
            raise FailedPreconditionError(
                f"workspace {workspace_id} is the default workspace and cannot be deleted"
            )
        with self._write() as conn:
            self._need_workspace(conn, workspace_id)
            has_exps = conn.scalar(
                select(
                    exists().where(
                        E.project_id == ProjectRow.id, ProjectRow.workspace_id == workspace_id
                    )
                )
            )
            if has_exps:
                raise FailedPreconditionError(
                    f"workspace {workspace_id} holds projects with experiments"
                )
            if conn.scalar(select(exists().where(ModelRow.workspace_id == workspace_id))):
                raise FailedPreconditionError(f"workspace {workspace_id} holds models")
            conn.execute(delete(ProjectRow).where(ProjectRow.workspace_id == workspace_id))
            conn.execute(delete(WorkspaceRow).where(WorkspaceRow.id == workspace_id))

    def create_project(self, workspace_id: int, name: str, description: str = "") -> Project:
        """Create a project, its name unique within the workspace."""
        _check_name("project", name)
        dup = AlreadyExistsError(
            f"project named {name!r} already exists in workspace {workspace_id}"
        )
        try:
            with self._write() as conn:
                self._need_workspace(conn, workspace_id)
                found = conn.scalar(
                    select(ProjectRow.id).where(
                        ProjectRow.workspace_id == workspace_id, ProjectRow.name == name
                    )
                )
                if found is not None:
                    raise dup
                res = conn.execute(
                    insert(ProjectRow).values(
                        workspace_id=workspace_id,
                        name=name,
                        description=description,
                        archived=False,
                    )
                )
                project_id = _pk(res)
        except IntegrityError:
            raise dup from None
        return Project(id=project_id, name=name, workspace_id=workspace_id, description=description)

    def _get_project(self, where: ColumnElement[bool], what: str) -> Project:
        with self._read() as conn:
            row = conn.execute(select(*_PROJECT_COLS).where(where)).first()
        if row is None:
            raise NotFoundError(f"{what} not found")
        return _to_project(row)

    def get_project(self, project_id: int) -> Project:
        """The project with this id."""
        return self._get_project(ProjectRow.id == project_id, f"project {project_id}")

    def get_project_by_name(self, workspace_id: int, name: str) -> Project:
        """The project named ``name`` in the workspace."""
        return self._get_project(
            and_(ProjectRow.workspace_id == workspace_id, ProjectRow.name == name),
            f"project named {name!r} in workspace {workspace_id}",
        )

    def list_projects(self, workspace_id: int | None = None) -> list[Project]:
        """Projects by id, of one workspace or of all."""
        stmt = select(*_PROJECT_COLS).order_by(ProjectRow.id)
        with self._read() as conn:
            if workspace_id is not None:
                self._need_workspace(conn, workspace_id)
                stmt = stmt.where(ProjectRow.workspace_id == workspace_id)
            return [_to_project(r) for r in conn.execute(stmt)]

    def update_project(
        self,
        project_id: int,
        *,
        name: str = _UNSET,
        description: str = _UNSET,
        archived: bool = _UNSET,
        notes: Sequence[tuple[str, str]] = _UNSET,
    ) -> Project:
        """Set the given fields (others unchanged) and return the new value."""
        values: dict[str, Any] = {}
        if name is not _UNSET:
            _check_name("project", name)
            values["name"] = name
        if description is not _UNSET:
            values["description"] = description
        if archived is not _UNSET:
            values["archived"] = bool(archived)
        if notes is not _UNSET:
            values["notes"] = _dumps([[str(n), str(c)] for n, c in notes])
        try:
            with self._write() as conn:
                self._need_project(conn, project_id)
                if values:
                    conn.execute(
                        update(ProjectRow).where(ProjectRow.id == project_id).values(**values)
                    )
        except IntegrityError:
            raise AlreadyExistsError(
                f"project named {name!r} already exists in its workspace"
            ) from None
        return self.get_project(project_id)

    def delete_project(self, project_id: int) -> None:
        """Delete an empty, non-default project."""
        if project_id == DEFAULT_PROJECT_ID:
            raise FailedPreconditionError(
                f"project {project_id} is the default project and cannot be deleted"
            )
        with self._write() as conn:
            self._need_project(conn, project_id)
            if conn.scalar(select(exists().where(E.project_id == project_id))):
                raise FailedPreconditionError(f"project {project_id} holds experiments")
            conn.execute(delete(ProjectRow).where(ProjectRow.id == project_id))

    # -- experiments --------------------------------------------------------------------------
    @staticmethod
    def _read_experiment(conn: Connection, experiment_id: int) -> Experiment:
        row = conn.execute(_EXP_BY_ID, {"id": experiment_id}).first()
        if row is None:
            raise NotFoundError(f"experiment {experiment_id} not found")
        return _to_experiment(row)

    def create_experiment(self, new: NewExperiment) -> Experiment:
        """Create an experiment in ``new.project_id``; ``start_time`` is now."""
        labels = _dedup(new.labels)
        config = _dumps(new.config)
        searcher_state = None if new.searcher_state is None else _dumps(new.searcher_state)
        state = ExperimentState(new.state)
        start_time = time.time()
        row: dict[str, Any] = {
            "project_id": new.project_id,
            "name": new.name,
            "description": new.description,
            "labels": _dumps(list(labels)),
            "config": config,
            "original_config": new.original_config,
            "model_definition": bytes(new.model_definition),
            "state": state.value,
            "archived": False,
            "progress": 0.0,
            "start_time": start_time,
            "end_time": None,
            "searcher_name": new.searcher_name,
            "unmanaged": bool(new.unmanaged),
            "error": "",
            "notes": "",
        }
        with self._write() as conn:
            workspace_id = conn.scalar(_PROJECT_WORKSPACE, {"project_id": new.project_id})
            if workspace_id is None:
                raise NotFoundError(f"project {new.project_id} not found")
            # Statements built once (their compiled form is cached), values bound per call.
            exp_id: int = _pk(conn.execute(_EXP_INSERT, row))
            if labels:
                conn.execute(
                    _LABEL_INSERT, [{"experiment_id": exp_id, "label": lb} for lb in labels]
                )
            if searcher_state is not None:
                conn.execute(
                    _SEARCHER_STATE_INSERT,
                    {"experiment_id": exp_id, "state": searcher_state, "update_time": time.time()},
                )
        # What reading the row back would give, without the read: a new experiment has no
        # trials, and the config is decoded from the text stored (the same round trip).
        return Experiment(
            id=exp_id,
            name=new.name,
            description=new.description,
            labels=labels,
            config=json.loads(config),
            original_config=new.original_config,
            state=state,
            archived=False,
            progress=0.0,
            project_id=new.project_id,
            workspace_id=int(workspace_id),
            start_time=start_time,
            end_time=None,
            searcher_name=new.searcher_name,
            num_trials=0,
            unmanaged=bool(new.unmanaged),
        )

    def get_experiment(self, experiment_id: int) -> Experiment:
        """The experiment with this id."""
        with self._read() as conn:
            return self._read_experiment(conn, experiment_id)

    def get_experiment_state(self, experiment_id: int) -> ExperimentState:
        """Only the experiment's state (see :meth:`Store.get_experiment_state`)."""
        with self._read() as conn:
            state = conn.scalar(_EXPERIMENT_STATE, {"id": experiment_id})
        if state is None:
            raise NotFoundError(f"experiment {experiment_id} not found")
        return ExperimentState(state)

    def get_model_definition(self, experiment_id: int) -> bytes:
        """The experiment's packed model definition, as given at creation."""
        with self._read() as conn:
            row = conn.execute(select(E.model_definition).where(E.id == experiment_id)).first()
        if row is None:
            raise NotFoundError(f"experiment {experiment_id} not found")
        return bytes(row[0])

    def list_experiments(self, flt: ExperimentFilter) -> tuple[list[Experiment], int]:
        """One page of matching experiments and the number of matches (see ``ExperimentFilter``).

        Raises:
            InvalidArgumentError: Unknown ``sort_by`` or a negative offset/limit.
        """
        conds, order = self._experiment_query(flt)
        # Sort and cut on narrow rows (ids) first, then fetch the page's wide rows (config).
        page = self._page_by_ids(
            _exp_select() if flt.full else _exp_summary_select(), flt, conds, order
        )
        with self._read() as conn:
            read: list[_AnyRow] = list(conn.execute(page).all()) if flt.limit != 0 else []
            rows, total = self._page_and_total(conn, flt, conds, read)
        decode = _to_experiment if flt.full else _to_experiment_summary
        return [decode(r) for r in rows], total

    def list_experiment_summaries(
        self, flt: ExperimentFilter
    ) -> tuple[list[ExperimentSummaryRow], int]:
        """:meth:`list_experiments` without configs, as the driver's plain tuples.

        Raises:
            InvalidArgumentError: Unknown ``sort_by`` or a negative offset/limit.
        """
        conds, order = self._experiment_query(flt)
        base = _exp_rows_select()
        if self._sqlite and flt.sort_by == "id":
            # A scan in rowid order: SQLite skips the offset's rows before it computes their
            # columns, so cutting on ids first would only add a join and a sort.
            page = base.where(*conds).order_by(*order).offset(flt.offset)
            if flt.limit is not None:
                page = page.limit(flt.limit + 1)  # one past the page: is there more?
        else:
            page = self._page_by_ids(base, flt, conds, order)
        with self._read() as conn:
            rows, total = self._page_and_total(
                conn, flt, conds, fetch_rows(conn, page) if flt.limit != 0 else []
            )
        return cast("list[ExperimentSummaryRow]", rows), total

    @staticmethod
    def _page_and_total(
        conn: Connection, flt: ExperimentFilter, conds: list[ColumnElement[bool]], rows: list[_R]
    ) -> tuple[list[_R], int]:
        """The page and the number of matches, from the rows of a page query that reads one
        row past the limit (in this transaction): when no row follows the page, the page
        ends the list and no count is needed (unless it is empty past the start, or the
        limit is 0)."""
        n = len(rows)
        if flt.limit is not None and n > flt.limit:
            rows = rows[: flt.limit]
        elif flt.limit != 0 and (n or not flt.offset):
            return rows, flt.offset + n
        return rows, conn.scalar(select(func.count()).select_from(E).where(*conds)) or 0

    @staticmethod
    def _page_by_ids(
        base: Select[Any],
        flt: ExperimentFilter,
        conds: list[ColumnElement[bool]],
        order: list[Any],
    ) -> Select[Any]:
        """``base`` limited to the page's experiments (and the one after), found by sorting
        and cutting ids."""
        page_ids = select(E.id).where(*conds).order_by(*order).offset(flt.offset)
        if flt.limit is not None:
            page_ids = page_ids.limit(flt.limit + 1)  # one past the page: is there more?
        ids_sq = page_ids.subquery()
        return base.join(ids_sq, ids_sq.c.id == E.id).order_by(*order)

    def _experiment_query(
        self, flt: ExperimentFilter
    ) -> tuple[list[ColumnElement[bool]], list[Any]]:
        """The WHERE conditions and the ORDER BY keys of a list of experiments.

        Raises:
            InvalidArgumentError: Unknown ``sort_by`` or a negative offset/limit.
        """
        sort_col = _SORT_KEYS.get(flt.sort_by)
        if sort_col is None:
            raise InvalidArgumentError(
                f"sort_by must be one of {sorted(_SORT_KEYS)}, got {flt.sort_by!r}"
            )
        if flt.offset < 0 or (flt.limit is not None and flt.limit < 0):
            raise InvalidArgumentError(
                f"offset and limit must be >= 0, got offset={flt.offset} limit={flt.limit}"
            )
        conds: list[ColumnElement[bool]] = []
        if flt.project_id is not None:
            conds.append(E.project_id == flt.project_id)
        if flt.workspace_id is not None:
            conds.append(
                E.project_id.in_(
                    select(ProjectRow.id).where(ProjectRow.workspace_id == flt.workspace_id)
                )
            )
        if flt.states:
            conds.append(E.state.in_([ExperimentState(s).value for s in flt.states]))
        if flt.name_contains:
            conds.append(E.name.icontains(flt.name_contains, autoescape=True))
        if flt.archived is not None:
            conds.append(E.archived == flt.archived)
        for label in dict.fromkeys(flt.labels):
            conds.append(
                exists().where(
                    ExperimentLabelRow.experiment_id == E.id, ExperimentLabelRow.label == label
                )
            )
        key: Any = sort_col
        if flt.sort_by == "name" and not self._sqlite:
            key = sort_col.collate("C")  # code point order, as SQLite's BINARY
        if flt.descending:
            order = [key.desc(), E.id.desc()]
            if flt.sort_by == "end_time":  # unfinished experiments end "last"
                order[0] = order[0].nulls_first()
        else:
            order = [key.asc(), E.id.asc()]
            if flt.sort_by == "end_time":
                order[0] = order[0].nulls_last()
        return conds, order

    def update_experiment(
        self,
        experiment_id: int,
        *,
        name: str = _UNSET,
        description: str = _UNSET,
        labels: Sequence[str] = _UNSET,
        state: ExperimentState = _UNSET,
        archived: bool = _UNSET,
        progress: float = _UNSET,
        project_id: int = _UNSET,
        end_time: float | None = _UNSET,
        error: str = _UNSET,
        notes: str = _UNSET,
    ) -> Experiment:
        """Set the given fields (others unchanged) and return the new value."""
        values: dict[str, Any] = {}
        if notes is not _UNSET:
            values["notes"] = notes
        if name is not _UNSET:
            values["name"] = name
        if description is not _UNSET:
            values["description"] = description
        new_labels: tuple[str, ...] | None = None
        if labels is not _UNSET:
            if isinstance(labels, str):
                raise InvalidArgumentError("labels must be a sequence of strings, not a string")
            new_labels = _dedup(labels)
            values["labels"] = _dumps(list(new_labels))
        if state is not _UNSET:
            values["state"] = ExperimentState(state).value
        if archived is not _UNSET:
            values["archived"] = bool(archived)
        if progress is not _UNSET:
            values["progress"] = float(progress)
        if project_id is not _UNSET:
            values["project_id"] = project_id
        if end_time is not _UNSET:
            values["end_time"] = end_time
        if error is not _UNSET:
            values["error"] = error
        with self._write() as conn:
            self._need_experiment(conn, experiment_id)
            if project_id is not _UNSET:
                self._need_project(conn, project_id)
            if values:
                conn.execute(update(E).where(E.id == experiment_id).values(**values))
            if new_labels is not None:
                conn.execute(
                    delete(ExperimentLabelRow).where(
                        ExperimentLabelRow.experiment_id == experiment_id
                    )
                )
                if new_labels:
                    conn.execute(
                        insert(ExperimentLabelRow),
                        [{"experiment_id": experiment_id, "label": lb} for lb in new_labels],
                    )
            return self._read_experiment(conn, experiment_id)

    def delete_experiment(self, experiment_id: int) -> None:
        """Delete the experiment and everything under it.

        Raises:
            NotFoundError: No such experiment.
            FailedPreconditionError: One of its checkpoints is registered as a model version.
        """
        with self._write() as conn:
            self._need_experiment(conn, experiment_id)
            registered = conn.scalar(
                select(MV.checkpoint_uuid)
                .join(C, C.uuid == MV.checkpoint_uuid)
                .where(C.experiment_id == experiment_id)
                .limit(1)
            )
            if registered is not None:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} has checkpoint {registered!r} registered "
                    "as a model version; delete the model version first"
                )
            conn.execute(delete(E).where(E.id == experiment_id))

    def save_searcher_state(
        self, experiment_id: int, state: JSONDict, *, events_through: int | None = None
    ) -> int:
        """Replace the snapshot; delete the searcher events it covers (same transaction).
        Returns the snapshot's size in bytes."""
        payload = _dumps(state)
        ev = SearcherEventRow
        with self._write() as conn:
            self._need_experiment(conn, experiment_id)
            if events_through is None:
                last = conn.scalar(select(func.max(ev.id)).where(ev.experiment_id == experiment_id))
                events_through = int(last or 0)
            conn.execute(
                self._upsert(
                    SearcherStateRow,
                    {
                        "experiment_id": experiment_id,
                        "state": payload,
                        "update_time": time.time(),
                        "events_through": events_through,
                    },
                    ["experiment_id"],
                )
            )
            conn.execute(
                delete(ev).where(ev.experiment_id == experiment_id, ev.id <= events_through)
            )
        return len(payload)

    def load_searcher_state(self, experiment_id: int) -> JSONDict | None:
        """The last snapshot saved, or None if none was."""
        with self._read() as conn:
            self._need_experiment(conn, experiment_id)
            raw = conn.scalar(
                select(SearcherStateRow.state).where(
                    SearcherStateRow.experiment_id == experiment_id
                )
            )
        if raw is None:
            return None
        out: JSONDict = json.loads(raw)
        return out

    def set_experiment_progress(self, experiment_id: int, progress: float) -> None:
        """Set only the progress (see :meth:`Store.set_experiment_progress`)."""
        with self._write() as conn:
            done = conn.execute(
                _SET_PROGRESS, {"exp_id": experiment_id, "new_progress": float(progress)}
            )
            if done.rowcount == 0:
                raise NotFoundError(f"experiment {experiment_id} not found")

    def append_searcher_event(self, experiment_id: int, event: JSONDict) -> int:
        """Append one event to the experiment's searcher log; returns its id."""
        payload = _dumps(event)
        try:
            with self._write() as conn:
                # No read first: the foreign key refuses an event of no experiment.
                new_id = conn.execute(
                    _APPEND_EVENT, {"exp_id": experiment_id, "payload": payload}
                ).scalar_one()
        except IntegrityError:
            raise NotFoundError(f"experiment {experiment_id} not found") from None
        return int(new_id)

    def load_searcher_log(self, experiment_id: int) -> SearcherLog:
        """The last snapshot and the events appended after it, oldest first."""
        ev = SearcherEventRow
        with self._read() as conn:
            self._need_experiment(conn, experiment_id)
            row = conn.execute(
                select(SearcherStateRow.state, SearcherStateRow.events_through).where(
                    SearcherStateRow.experiment_id == experiment_id
                )
            ).first()
            through = 0 if row is None else int(row[1])
            events = conn.execute(
                select(ev.id, ev.event)
                .where(ev.experiment_id == experiment_id, ev.id > through)
                .order_by(ev.id)
            ).all()
        return SearcherLog(
            snapshot=None if row is None else json.loads(row[0]),
            events=[(int(i), json.loads(e)) for i, e in events],
        )

    # -- trials -------------------------------------------------------------------------------
    @staticmethod
    def _read_trial(conn: Connection, trial_id: int) -> Trial:
        row = conn.execute(_TRIAL_BY_ID, {"id": trial_id}).first()
        if row is None:
            raise NotFoundError(f"trial {trial_id} not found")
        return _to_trial(row)

    def create_trial(
        self,
        experiment_id: int,
        *,
        request_id: str,
        hparams: JSONDict,
        state: TrialState = TrialState.QUEUED,
        warm_start_checkpoint_uuid: str | None = None,
    ) -> Trial:
        """Create a trial; ``request_id`` is unique within the experiment."""
        dup = AlreadyExistsError(
            f"trial with request id {request_id!r} already exists in experiment {experiment_id}"
        )
        # One statement: the foreign key refuses a trial of no experiment and the unique
        # (experiment, request id) constraint a second trial of one request; which of the two
        # refused is read only then.
        try:
            with self._write() as conn:
                row = conn.execute(
                    insert(T)
                    .values(
                        experiment_id=experiment_id,
                        request_id=request_id,
                        hparams=_dumps(hparams),
                        state=TrialState(state).value,
                        summary_metrics="{}",
                        summary_state="{}",
                        restarts=0,
                        run_id=0,
                        start_time=time.time(),
                        end_time=None,
                        latest_checkpoint_uuid=None,
                        warm_start_checkpoint_uuid=warm_start_checkpoint_uuid,
                        steps_completed=0,
                        progress=0.0,
                        exit_reason="",
                    )
                    .returning(*_TRIAL_COLS)
                ).one()
        except IntegrityError:
            with self._read() as conn:
                self._need_experiment(conn, experiment_id)
            raise dup from None
        return _to_trial(row)

    def get_trial(self, trial_id: int) -> Trial:
        """The trial with this id."""
        with self._read() as conn:
            return self._read_trial(conn, trial_id)

    def list_trials(
        self,
        experiment_id: int | None = None,
        *,
        states: Sequence[TrialState] = (),
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Trial], int]:
        """Trials ordered by id (all experiments when ``experiment_id`` is None) and the total."""
        if offset < 0 or (limit is not None and limit < 0):
            raise InvalidArgumentError(
                f"offset and limit must be >= 0, got offset={offset} limit={limit}"
            )
        conds: list[ColumnElement[bool]] = []
        if experiment_id is not None:
            conds.append(T.experiment_id == experiment_id)
        if states:
            conds.append(T.state.in_([TrialState(s).value for s in states]))
        page = select(*_TRIAL_COLS).where(*conds).order_by(T.id).offset(offset)
        if limit is not None:
            page = page.limit(limit)
        with self._read() as conn:
            if experiment_id is not None:
                self._need_experiment(conn, experiment_id)
            total = conn.scalar(select(func.count()).select_from(T).where(*conds)) or 0
            rows = conn.execute(page).all() if limit != 0 else []
        return [_to_trial(r) for r in rows], total

    def update_trial(
        self,
        trial_id: int,
        *,
        state: TrialState = _UNSET,
        restarts: int = _UNSET,
        run_id: int = _UNSET,
        start_time: float = _UNSET,
        end_time: float | None = _UNSET,
        progress: float = _UNSET,
        exit_reason: str = _UNSET,
        latest_checkpoint_uuid: str | None = _UNSET,
    ) -> Trial:
        """Set the given fields (others unchanged) and return the new value."""
        given = {
            "state": state,
            "restarts": restarts,
            "run_id": run_id,
            "start_time": start_time,
            "end_time": end_time,
            "progress": progress,
            "exit_reason": exit_reason,
            "latest_checkpoint_uuid": latest_checkpoint_uuid,
        }
        values = {k: v for k, v in given.items() if v is not _UNSET}
        if "state" in values:
            values["state"] = TrialState(values["state"]).value
        with self._write() as conn:
            if not values:
                return self._read_trial(conn, trial_id)
            row = conn.execute(
                update(T).where(T.id == trial_id).values(**values).returning(*_TRIAL_COLS)
            ).first()
        if row is None:
            raise NotFoundError(f"trial {trial_id} not found")
        return _to_trial(row)

    # -- metrics ------------------------------------------------------------------------------
    def add_metrics(
        self, trial_id: int, batch_id: str, reports: Sequence[MetricReport], run_id: int = 0
    ) -> bool:
        """Store one batch and update the summary; False if ``batch_id`` was already stored.

        ``run_id`` is the trial run that reported the batch (0: unknown).

        Raises:
            NotFoundError: No such trial.
            InvalidArgumentError: An empty batch id, group or metric name, a negative step, or
                a value that is not a number.
        """
        result = self.add_metrics_many([(trial_id, batch_id, reports, run_id)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def add_metrics_many(
        self, batches: Sequence[tuple[int, str, Sequence[MetricReport], int]]
    ) -> list[bool | DeterminedError]:
        """Store many ``(trial_id, batch_id, reports, run_id)`` batches (of any trials) in one
        transaction; see :meth:`add_metrics`.

        Returns:
            Per batch, in order: True (stored), False (its batch id was already stored, earlier
            or in this same call), or the error that batch alone raises (a bad batch does not
            stop the others).
        """
        results: list[bool | DeterminedError] = [False] * len(batches)
        prepared: list[tuple[int, int, str, list[tuple[Any, ...]], _Partial, int]] = []
        for i, (trial_id, batch_id, reports, run_id) in enumerate(batches):
            try:
                rows, partial, max_steps = _prepare_batch(trial_id, batch_id, reports, run_id)
            except DeterminedError as e:
                results[i] = e
                continue
            prepared.append((i, trial_id, batch_id, rows, partial, max_steps))
        if not prepared:
            return results
        trial_ids = sorted({p[1] for p in prepared})
        with self._write() as conn:
            # Per trial: [summary, state, steps, changed], and its last checkpoint's steps.
            summaries: dict[int, list[Any]] = {}
            last_ckpt: dict[int, int | None] = {}
            # Exact (trial, batch) pairs through the primary key: a trial's earlier batches
            # are never read (an IN on each column alone scans them all, 180 ms for 1,000).
            pairs = sorted({(p[1], p[2]) for p in prepared})
            seen: set[tuple[int, str]] = set()
            # The trial rows first: on PostgreSQL they are locked (FOR UPDATE) before the
            # batches are looked up, so a concurrent commit of the same batch is seen.
            if self._sqlite:
                trial_rows = [
                    r for t in trial_ids for r in _TRIAL_SUMMARY_ONE.rows(conn, {"id": t})
                ]
                for tid, bid in pairs:
                    if _BATCH_SEEN_ONE.rows(conn, {"tid": tid, "bid": bid}):
                        seen.add((tid, bid))
            else:
                trial_rows = [
                    r
                    for i in range(0, len(trial_ids), 500)
                    for r in conn.execute(_TRIAL_SUMMARIES, {"ids": trial_ids[i : i + 500]})
                ]
                seen = {
                    (r[0], r[1])
                    for i in range(0, len(pairs), 500)
                    for r in conn.execute(_BATCHES_SEEN, {"pairs": pairs[i : i + 500]})
                }
            for r in trial_rows:
                summaries[r[0]] = [json.loads(r[1]), json.loads(r[2]), r[3], False]
                last_ckpt[r[0]] = r[4]
            batch_rows: list[dict[str, Any]] = []
            metric_rows: list[tuple[Any, ...]] = []
            reported: dict[int, list[MetricReport]] = {}  # per trial, for checkpoint metrics
            series_new: dict[tuple[int, str], list[MetricReport]] = {}  # in insertion order
            for i, trial_id, batch_id, rows, partial, max_steps in prepared:
                cur = summaries.get(trial_id)
                if cur is None:
                    results[i] = NotFoundError(f"trial {trial_id} not found")
                    continue
                if (trial_id, batch_id) in seen:
                    continue  # results[i] stays False: a retry of a stored batch
                seen.add((trial_id, batch_id))
                results[i] = True
                batch_rows.append({"tid": trial_id, "bid": batch_id})
                if not rows:
                    continue
                metric_rows += rows
                reported.setdefault(trial_id, []).extend(batches[i][2])
                for r in batches[i][2]:
                    series_new.setdefault((trial_id, r.group), []).append(r)
                _merge_summary(cur[0], cur[1], partial)
                cur[2] = max(cur[2], max_steps)
                cur[3] = True
            if batch_rows:
                _BATCH_INSERT.run_many(conn, batch_rows)
            if metric_rows:
                # Before the insert: it reads what was there, and the new points from memory.
                extended = metric_series.append(conn, series_new, self._series_pending)
                self._insert_metric_rows(conn, metric_rows)
                metric_series.set_last_ids(conn, extended)
            self._refresh_checkpoint_metrics(conn, reported, last_ckpt)
            changed = [
                {
                    "tid": tid,
                    "b_summary": _STRICT.encode(v[0]),
                    "b_state": _STRICT.encode(v[1]),
                    "b_steps": v[2],
                }
                for tid, v in summaries.items()
                if v[3]
            ]
            if changed:
                _TRIAL_SUMMARY_UPDATE.run_many(conn, changed)
        return results

    def _refresh_checkpoint_metrics(
        self,
        conn: Connection,
        reported: dict[int, list[MetricReport]],
        last_ckpt: dict[int, int | None],
    ) -> None:
        """A checkpoint's metrics do not depend on whether it or the report came first:
        checkpoints at or after a newly reported step get their metrics of that group again.

        ``reported`` maps trial ids to their new reports, ``last_ckpt`` to the steps of their
        last checkpoint (None: none), read in this transaction. Usually new reports are past
        every checkpoint of their trial.
        """
        firsts: dict[int, dict[str, int]] = {}
        for tid, reports in reported.items():
            first: dict[str, int] = {}
            for r in reports:
                if r.group in ("training", "validation") and r.steps_completed < first.get(
                    r.group, r.steps_completed + 1
                ):
                    first[r.group] = r.steps_completed
            if first:
                firsts[tid] = first
        stale = [
            tid
            for tid in sorted(firsts)
            if (last := last_ckpt.get(tid)) is not None and last >= min(firsts[tid].values())
        ]
        for tid in stale:
            first = firsts[tid]
            ckpts = conn.execute(
                select(C.uuid, C.steps_completed).where(
                    C.trial_id == tid, C.steps_completed >= min(first.values())
                )
            ).all()
            for uuid, steps in ckpts:
                values: dict[str, str] = {}
                if "training" in first and steps >= first["training"]:
                    values["training_metrics"] = self._metrics_at(conn, tid, "training", steps)
                if "validation" in first and steps >= first["validation"]:
                    values["validation_metrics"] = self._metrics_at(conn, tid, "validation", steps)
                if values:
                    conn.execute(update(C).where(C.uuid == uuid).values(**values))

    def _insert_metric_rows(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Bulk insert ``(trial_id, group, steps, timestamp, payload, run_id)`` rows at driver
        level: ``executemany`` on SQLite, ``COPY`` on PostgreSQL."""
        if self._sqlite:
            conn.exec_driver_sql(_METRICS_INSERT_SQLITE, rows)
            return
        driver_conn = conn.connection.driver_connection
        assert driver_conn is not None
        with driver_conn.cursor() as cursor, cursor.copy(_METRICS_COPY_PG) as copy:
            for row in rows:
                copy.write_row(row)

    def iter_metrics(
        self,
        trial_ids: Sequence[int],
        group: str | None = None,
        page_size: int = 10_000,
        *,
        include_superseded: bool = False,
    ) -> Iterator[list[MetricPoint]]:
        """Pages of points ordered by (trial_id, steps_completed, insertion order); lazy.

        Reports superseded by a restart from an earlier checkpoint are left out unless
        ``include_superseded``. Trials come in ascending id order whatever the order of
        ``trial_ids``. A view of :meth:`read_metrics` for callers that want decoded points.

        Raises:
            InvalidArgumentError: ``page_size`` < 1 (on the first ``next``).
            NotFoundError: One of the trials does not exist (on the first ``next``).
        """
        q = MetricQuery(
            tuple(trial_ids),
            group=group,
            page_size=page_size,
            include_superseded=include_superseded,
        )
        for cols in self.read_metrics(q):
            yield list(cols.points())

    def read_metrics(self, query: MetricQuery) -> Iterator[MetricColumns]:
        """Pages of points as columns, ordered by (trial_id, steps_completed, insertion order);
        lazy. See :mod:`master_server.store.metrics_read` for the access paths.

        Raises:
            InvalidArgumentError: ``page_size`` < 1, an empty metric name, ``min_steps`` >
                ``max_steps`` (on the first ``next``).
            NotFoundError: One of the trials does not exist (on the first ``next``).
        """
        _check_metric_query(query)
        ids = sorted(set(query.trial_ids))
        if ids:
            with self._read() as conn:
                found = set(conn.scalars(select(T.id).where(T.id.in_(ids))))
            for tid in ids:
                if tid not in found:
                    raise NotFoundError(f"trial {tid} not found")
        yield from read_metric_columns(self._read, query)

    def last_metric_id(self) -> int:
        """The storage id of the last metric point stored (0 if none)."""
        with self._read() as conn:
            return int(conn.scalar(select(func.max(MetricRow.id))) or 0)

    def supersede_metrics(self, trial_id: int, run_id: int, after_steps: int) -> int:
        """Run ``run_id`` restarts the trial at ``after_steps``: earlier runs' reports at later
        steps are superseded and the trial's summary no longer counts them. Returns how many
        reports were marked."""
        m = MetricRow
        with self._write() as conn:
            self._need_trial(conn, trial_id)
            # The trial row first, as add_metrics_many locks it: the summary is rebuilt below.
            conn.execute(select(T.id).where(T.id == trial_id).with_for_update())
            result = conn.execute(
                update(m)
                .where(
                    m.trial_id == trial_id,
                    m.run_id < run_id,
                    m.steps_completed > after_steps,
                    m.superseded == false(),
                )
                .values(superseded=True)
            )
            marked = int(result.rowcount or 0)
            if marked:
                self._rebuild_summary(conn, trial_id)
                metric_series.rebuild(conn, trial_id)
            return marked

    def metric_series(
        self, trial_ids: Sequence[int], group: str, names: Sequence[str] = ()
    ) -> dict[int, dict[str, SeriesColumns]]:
        """Per trial, the chart series of one group: per metric name, the points a read of
        ``metrics`` without ``include_superseded`` gives for that name, in the same order, as
        packed columns (see :mod:`master_server.store.metric_series`).

        A series that was never built (points stored before it existed) or could not be
        appended to (points below its last step, a supersession) is rebuilt here first.

        Args:
            trial_ids: The trials (each must exist).
            group: The metric group.
            names: Only these metric names; empty: every name of the group.

        Returns:
            ``{trial_id: {name: SeriesColumns}}`` with names sorted; a name a trial has no
            point of is absent.

        Raises:
            InvalidArgumentError: An empty group or name.
            NotFoundError: A trial does not exist.
        """
        _check_metric_query(MetricQuery(tuple(trial_ids), group=group, names=tuple(names)))
        if not isinstance(group, str) or not group:
            raise InvalidArgumentError(f"group: must be a non-empty string, got {group!r}")
        ids = sorted(set(trial_ids))
        # One snapshot: a commit that moves a tail into a segment between the reads of the
        # segments and of the tail would otherwise show its points twice.
        with self._snapshot_read() as conn:
            found = set(conn.scalars(select(T.id).where(T.id.in_(ids))))
            for tid in ids:
                if tid not in found:
                    raise NotFoundError(f"trial {tid} not found")
            out, stale = metric_series.read(conn, ids, group, names)
        for tid in stale:
            with self._write() as conn:
                # The trial row first, as add_metrics_many locks it.
                conn.execute(select(T.id).where(T.id == tid).with_for_update())
                st = conn.execute(
                    select(MetricSeriesStateRow.complete).where(
                        MetricSeriesStateRow.trial_id == tid,
                        MetricSeriesStateRow.metric_group == group,
                    )
                ).first()
                if st is None or not st[0]:  # else another reader rebuilt it meanwhile
                    metric_series.rebuild(conn, tid, [group])
                # Read in the same transaction: no commit can make it stale again before.
                again, _ = metric_series.read(conn, [tid], group, names)
            out.update(again)
        return {tid: out[tid] for tid in ids}

    def _rebuild_summary(self, conn: Connection, trial_id: int) -> None:
        """Recompute the trial's summary from its reports that are not superseded (in
        insertion order, chunk by chunk, exactly as :meth:`add_metrics_many` folds batches)."""
        m = MetricRow
        summary: JSONDict = {}
        aux: JSONDict = {}
        rows = conn.execute(
            select(m.metric_group, m.payload)
            .where(m.trial_id == trial_id, m.superseded == false())
            .order_by(m.id)
            .execution_options(yield_per=_SUMMARY_CHUNK)
        )
        for chunk in rows.partitions():
            by_group: dict[str, list[dict[str, float]]] = {}
            for group, payload in chunk:
                by_group.setdefault(group, []).append(_decode_metrics(payload))
            partial, _ = _fold_batch(by_group)
            _merge_summary(summary, aux, partial)
        conn.execute(
            update(T)
            .where(T.id == trial_id)
            .values(summary_metrics=_STRICT.encode(summary), summary_state=_STRICT.encode(aux))
        )

    # -- checkpoints --------------------------------------------------------------------------
    @staticmethod
    def _metrics_at(conn: Connection, trial_id: int, group: str, steps: int) -> str:
        """The merged metrics of the last ``group`` report at or before ``steps``, as JSON
        (superseded reports do not count)."""
        payloads = conn.scalars(
            _PAYLOADS_AT, {"tid": trial_id, "group": group, "steps": steps}
        ).all()
        if len(payloads) == 1:
            return payloads[0]
        merged: dict[str, float] = {}
        for p in payloads:
            merged.update(_decode_metrics(p))
        return _encode_metrics(merged)

    @staticmethod
    def _refresh_latest(
        conn: Connection, trial_id: int, uuid: str, state: CheckpointState, steps: int
    ) -> None:
        """Keep ``trials.latest_checkpoint_uuid`` on the highest-step COMPLETED checkpoint."""
        done = CheckpointState.COMPLETED.value
        if state is CheckpointState.COMPLETED:
            best_other = conn.scalar(
                _BEST_OTHER_CKPT_STEPS, {"tid": trial_id, "done": done, "uuid": uuid}
            )
            if best_other is None or steps >= best_other:
                conn.execute(_SET_LATEST_CKPT, {"tid": trial_id, "latest": uuid})
            return
        latest = conn.scalar(_LATEST_CKPT, {"tid": trial_id})
        if latest == uuid:  # the latest one is no longer usable: fall back to the next best
            best = conn.scalar(
                select(C.uuid)
                .where(C.trial_id == trial_id, C.state == done)
                .order_by(C.steps_completed.desc(), C.report_time.desc(), C.uuid.desc())
                .limit(1)
            )
            conn.execute(update(T).where(T.id == trial_id).values(latest_checkpoint_uuid=best))

    @staticmethod
    def _read_checkpoint(conn: Connection, uuid: str) -> Checkpoint:
        row = conn.execute(_CKPT_BY_UUID, {"uuid": uuid}).first()
        if row is None:
            raise NotFoundError(f"checkpoint {uuid!r} not found")
        return _to_checkpoint(row)

    def add_checkpoint(self, ckpt: Checkpoint) -> Checkpoint:
        """Record a checkpoint (metrics filled in as the contract says).

        Re-adding the same uuid for the same trial replaces resources, metadata and state
        (and refreshes the metrics); ``experiment_id`` 0 means "the trial's experiment".

        Raises:
            NotFoundError: No such trial.
            AlreadyExistsError: The uuid is recorded for another trial.
            InvalidArgumentError: Empty uuid, negative steps, or an experiment id that is not
                the trial's.
        """
        if not isinstance(ckpt.uuid, str) or not ckpt.uuid:
            raise InvalidArgumentError(f"checkpoint uuid must be a non-empty string: {ckpt!r}")
        if ckpt.steps_completed < 0:
            raise InvalidArgumentError(f"steps_completed must be >= 0: {ckpt!r}")
        state = CheckpointState(ckpt.state)
        dup = AlreadyExistsError(f"checkpoint {ckpt.uuid!r} already exists for another trial")
        try:
            with self._write() as conn:
                exp_id = conn.scalar(_TRIAL_EXPERIMENT_LOCKED, {"id": ckpt.trial_id})
                if exp_id is None:
                    raise NotFoundError(f"trial {ckpt.trial_id} not found")
                if ckpt.experiment_id not in (0, exp_id):
                    raise InvalidArgumentError(
                        f"trial {ckpt.trial_id} belongs to experiment {exp_id}, "
                        f"not {ckpt.experiment_id}"
                    )
                old = conn.execute(_CKPT_TRIAL_STEPS, {"uuid": ckpt.uuid}).first()
                if old is not None and old[0] != ckpt.trial_id:
                    raise AlreadyExistsError(
                        f"checkpoint {ckpt.uuid!r} already exists for trial {old[0]}"
                    )
                steps = ckpt.steps_completed if old is None else old[1]
                train = self._metrics_at(conn, ckpt.trial_id, "training", steps)
                val = self._metrics_at(conn, ckpt.trial_id, "validation", steps)
                if old is None:
                    conn.execute(
                        _CKPT_INSERT,
                        {
                            "uuid": ckpt.uuid,
                            "trial_id": ckpt.trial_id,
                            "experiment_id": exp_id,
                            "state": state.value,
                            "steps_completed": steps,
                            "resources": _dumps(ckpt.resources),
                            "metadata": _dumps(ckpt.metadata),  # the column's name
                            "storage": _dumps(ckpt.storage),
                            "report_time": float(ckpt.report_time),
                            "training_metrics": train,
                            "validation_metrics": val,
                        },
                    )
                else:
                    conn.execute(
                        update(C)
                        .where(C.uuid == ckpt.uuid)
                        .values(
                            state=state.value,
                            resources=_dumps(ckpt.resources),
                            meta=_dumps(ckpt.metadata),
                            training_metrics=train,
                            validation_metrics=val,
                        )
                    )
                self._refresh_latest(conn, ckpt.trial_id, ckpt.uuid, state, steps)
                return self._read_checkpoint(conn, ckpt.uuid)
        except IntegrityError:
            raise dup from None

    def get_checkpoint(self, uuid: str) -> Checkpoint:
        """The checkpoint with this uuid."""
        with self._read() as conn:
            return self._read_checkpoint(conn, uuid)

    def checkpoint_uuids_starting(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` checkpoint uuids that start with ``prefix``, in order."""
        stmt = select(C.uuid).where(C.uuid.startswith(prefix, autoescape=True))
        with self._read() as conn:
            return list(conn.scalars(stmt.order_by(C.uuid).limit(limit)))

    def list_checkpoints(
        self,
        *,
        experiment_id: int | None = None,
        trial_id: int | None = None,
        states: Sequence[CheckpointState] = (),
    ) -> list[Checkpoint]:
        """Checkpoints of one experiment or trial, ordered by (trial_id, steps_completed);
        ``states`` empty means every state but DELETED.

        Raises:
            InvalidArgumentError: Not exactly one of ``experiment_id`` and ``trial_id`` given.
            NotFoundError: The experiment or trial does not exist.
        """
        if (experiment_id is None) == (trial_id is None):
            raise InvalidArgumentError("give exactly one of experiment_id and trial_id")
        state_cond: ColumnElement[bool]
        if states:
            state_cond = C.state.in_([CheckpointState(s).value for s in states])
        else:
            state_cond = C.state != CheckpointState.DELETED.value
        stmt = (
            select(*_CKPT_COLS)
            .where(state_cond)
            .order_by(C.trial_id, C.steps_completed, C.report_time, C.uuid)
        )
        with self._read() as conn:
            if trial_id is not None:
                self._need_trial(conn, trial_id)
                stmt = stmt.where(C.trial_id == trial_id)
            else:
                assert experiment_id is not None
                self._need_experiment(conn, experiment_id)
                stmt = stmt.where(C.experiment_id == experiment_id)
            return [_to_checkpoint(r) for r in conn.execute(stmt)]

    def update_checkpoint(
        self,
        uuid: str,
        *,
        state: CheckpointState = _UNSET,
        metadata: JSONDict = _UNSET,
        resources: dict[str, int] = _UNSET,
    ) -> Checkpoint:
        """Set the given fields and return the new value.

        A change of state keeps the trial's ``latest_checkpoint_uuid`` on its highest-step
        COMPLETED checkpoint (it moves off one that is no longer COMPLETED).
        """
        values: dict[str, Any] = {}
        if state is not _UNSET:
            state = CheckpointState(state)
            values["state"] = state.value
        if metadata is not _UNSET:
            values["meta"] = _dumps(metadata)
        if resources is not _UNSET:
            values["resources"] = _dumps(resources)
        with self._write() as conn:
            row = conn.execute(select(C.trial_id, C.steps_completed).where(C.uuid == uuid)).first()
            if row is None:
                raise NotFoundError(f"checkpoint {uuid!r} not found")
            trial_id, steps = row[0], row[1]
            conn.execute(select(T.id).where(T.id == trial_id).with_for_update())
            if values:
                conn.execute(update(C).where(C.uuid == uuid).values(**values))
            if state is not _UNSET:
                self._refresh_latest(conn, trial_id, uuid, state, steps)
            return self._read_checkpoint(conn, uuid)

    # -- logs ---------------------------------------------------------------------------------
    def add_logs(self, lines: Sequence[LogLine], batch_id: str = "") -> bool:
        """Append lines (one transaction); ids are assigned increasing in the given order.

        A ``batch_id`` already stored for the first line's trial makes the call a no-op that
        returns False.

        Raises:
            NotFoundError: A line names a trial that does not exist.
        """
        if not lines:
            return True
        rows = [
            {
                "trial_id": ln.trial_id,
                "timestamp": float(ln.timestamp),
                "message": ln.message,
                "rank": ln.rank,
                "stream": ln.stream,
                "level": ln.level,
                "run_id": ln.run_id,
            }
            for ln in lines
        ]
        wanted = sorted({ln.trial_id for ln in lines})
        with self._write() as conn:
            found = set(conn.scalars(select(T.id).where(T.id.in_(wanted))))
            for tid in wanted:
                if tid not in found:
                    raise NotFoundError(f"trial {tid} not found")
            if batch_id:
                owner = lines[0].trial_id
                seen = conn.scalar(
                    select(LogBatchRow.trial_id).where(
                        LogBatchRow.trial_id == owner, LogBatchRow.batch_id == batch_id
                    )
                )
                if seen is not None:
                    return False
                conn.execute(insert(LogBatchRow).values(trial_id=owner, batch_id=batch_id))
            conn.execute(insert(LogRow), rows)
        return True

    def query_logs(self, q: LogQuery) -> list[LogLine]:
        """Matching lines with id > ``q.after_id`` in id order, cut by head/tail.

        ``search`` is a case-sensitive substring match, ``regex`` a regular expression search
        (Python's ``re`` on SQLite, the ``~`` operator on PostgreSQL: the common syntax is the
        same); timestamps bounds are exclusive.

        Raises:
            InvalidArgumentError: Both ``head`` and ``tail`` given, or a negative one.
            NotFoundError: No such trial.
        """
        if q.head is not None and q.tail is not None:
            raise InvalidArgumentError("give at most one of head and tail")
        for n in (q.head, q.tail):
            if n is not None and n < 0:
                raise InvalidArgumentError(f"head/tail must be >= 0, got {n}")
        lg = LogRow
        conds: list[ColumnElement[bool]] = [lg.trial_id == q.trial_id, lg.id > q.after_id]
        if q.search:
            finder = (
                func.instr(lg.message, q.search)
                if self._sqlite
                else func.strpos(lg.message, q.search)
            )
            conds.append(finder > 0)
        if q.regex:
            check_regex(q.regex)
            conds.append(lg.message.regexp_match(q.regex))
        if q.levels:
            conds.append(lg.level.in_(list(q.levels)))
        if q.ranks:
            conds.append(lg.rank.in_(list(q.ranks)))
        if q.streams:
            conds.append(lg.stream.in_(list(q.streams)))
        if q.timestamp_after is not None:
            conds.append(lg.timestamp > q.timestamp_after)
        if q.timestamp_before is not None:
            conds.append(lg.timestamp < q.timestamp_before)
        stmt = select(*_LOG_COLS).where(*conds)
        if q.tail is not None:
            stmt = stmt.order_by(lg.id.desc()).limit(q.tail)
        else:
            stmt = stmt.order_by(lg.id)
            if q.head is not None:
                stmt = stmt.limit(q.head)
        try:
            with self._read() as conn:
                self._need_trial(conn, q.trial_id)
                out = [_to_log(r) for r in conn.execute(stmt)]
        except DBAPIError as e:
            if q.regex and not self._sqlite:  # Python's syntax, not PostgreSQL's
                raise InvalidArgumentError(
                    f"regex: PostgreSQL cannot use {q.regex!r} ({e.orig})"
                ) from None
            raise
        if q.tail is not None:
            out.reverse()
        return out

    # -- models -------------------------------------------------------------------------------
    @staticmethod
    def _read_model(conn: Connection, name: str) -> Model:
        row = conn.execute(select(*_MODEL_COLS).where(ModelRow.name == name)).first()
        if row is None:
            raise NotFoundError(f"model {name!r} not found")
        return _to_model(row)

    @staticmethod
    def _model_id(conn: Connection, name: str, *, lock: bool = False) -> int:
        stmt = select(ModelRow.id).where(ModelRow.name == name)
        if lock:
            stmt = stmt.with_for_update()
        model_id = conn.scalar(stmt)
        if model_id is None:
            raise NotFoundError(f"model {name!r} not found")
        return model_id

    def create_model(
        self,
        name: str,
        *,
        description: str = "",
        metadata: JSONDict | None = None,
        labels: Sequence[str] = (),
        workspace_id: int = 1,
    ) -> Model:
        """Register a model under a unique name."""
        _check_name("model", name)
        tags = _dedup(labels)
        dup = AlreadyExistsError(f"model named {name!r} already exists")
        now = time.time()
        try:
            with self._write() as conn:
                self._need_workspace(conn, workspace_id)
                if conn.scalar(select(ModelRow.id).where(ModelRow.name == name)) is not None:
                    raise dup
                conn.execute(
                    insert(ModelRow).values(
                        workspace_id=workspace_id,
                        name=name,
                        description=description,
                        meta=_dumps(metadata or {}),
                        labels=_dumps(list(tags)),
                        archived=False,
                        creation_time=now,
                        last_updated_time=now,
                        last_version=0,
                    )
                )
                return self._read_model(conn, name)
        except IntegrityError:
            raise dup from None

    def get_model(self, name: str) -> Model:
        """The model with this name."""
        with self._read() as conn:
            return self._read_model(conn, name)

    def list_models(
        self,
        *,
        name_contains: str | None = None,
        labels: Sequence[str] = (),
        include_archived: bool = False,
        workspace_id: int | None = None,
    ) -> list[Model]:
        """Models by id; ``name_contains`` is case-insensitive, every label must be present."""
        stmt = select(*_MODEL_COLS).order_by(ModelRow.id)
        if name_contains:
            stmt = stmt.where(ModelRow.name.icontains(name_contains, autoescape=True))
        if not include_archived:
            stmt = stmt.where(ModelRow.archived.is_(False))
        if workspace_id is not None:
            stmt = stmt.where(ModelRow.workspace_id == workspace_id)
        with self._read() as conn:
            models = [_to_model(r) for r in conn.execute(stmt)]
        if labels:
            want = set(labels)
            models = [m for m in models if want.issubset(m.labels)]
        return models

    def update_model(
        self,
        name: str,
        *,
        new_name: str = _UNSET,
        description: str = _UNSET,
        metadata: JSONDict = _UNSET,
        labels: Sequence[str] = _UNSET,
        archived: bool = _UNSET,
        workspace_id: int = _UNSET,
    ) -> Model:
        """Set the given fields (``new_name`` renames) and return the new value."""
        values: dict[str, Any] = {}
        if workspace_id is not _UNSET:
            values["workspace_id"] = workspace_id
        if new_name is not _UNSET:
            values["name"] = _check_name("model", new_name)
        if description is not _UNSET:
            values["description"] = description
        if metadata is not _UNSET:
            values["meta"] = _dumps(metadata)
        if labels is not _UNSET:
            values["labels"] = _dumps(list(_dedup(labels)))
        if archived is not _UNSET:
            values["archived"] = bool(archived)
        dup = AlreadyExistsError(f"model named {new_name!r} already exists")
        try:
            with self._write() as conn:
                model_id = self._model_id(conn, name, lock=True)
                if workspace_id is not _UNSET:
                    self._need(conn, WorkspaceRow.id, workspace_id, f"workspace {workspace_id}")
                if new_name is not _UNSET and new_name != name:
                    taken = conn.scalar(select(ModelRow.id).where(ModelRow.name == new_name))
                    if taken is not None:
                        raise dup
                if values:
                    values["last_updated_time"] = time.time()
                    conn.execute(update(ModelRow).where(ModelRow.id == model_id).values(**values))
                return self._read_model(conn, values.get("name", name))
        except IntegrityError:
            raise dup from None

    def delete_model(self, name: str) -> None:
        """Delete the model and its versions."""
        with self._write() as conn:
            model_id = self._model_id(conn, name)
            conn.execute(delete(ModelRow).where(ModelRow.id == model_id))

    def create_model_version(
        self,
        model_name: str,
        checkpoint_uuid: str,
        *,
        name: str = "",
        comment: str = "",
        metadata: JSONDict | None = None,
        labels: Sequence[str] = (),
    ) -> ModelVersion:
        """Register a checkpoint as the model's next version (numbers count up from 1 per
        model and are never reused, even after a version is deleted).

        Raises:
            NotFoundError: No such model or checkpoint.
            FailedPreconditionError: The checkpoint is DELETED.
        """
        tags = _dedup(labels)
        now = time.time()
        with self._write() as conn:
            model_id = self._model_id(conn, model_name, lock=True)
            ck_state = conn.scalar(select(C.state).where(C.uuid == checkpoint_uuid))
            if ck_state is None:
                raise NotFoundError(f"checkpoint {checkpoint_uuid!r} not found")
            if ck_state == CheckpointState.DELETED.value:
                raise FailedPreconditionError(
                    f"checkpoint {checkpoint_uuid!r} is DELETED and cannot be registered"
                )
            version = conn.scalar(
                update(ModelRow)
                .where(ModelRow.id == model_id)
                .values(last_version=ModelRow.last_version + 1, last_updated_time=now)
                .returning(ModelRow.last_version)
            )
            if version is None:  # pragma: no cover - the row is locked and exists
                raise NotFoundError(f"model {model_name!r} not found")
            res = conn.execute(
                insert(MV).values(
                    model_id=model_id,
                    version=version,
                    name=name,
                    comment=comment,
                    meta=_dumps(metadata or {}),
                    labels=_dumps(list(tags)),
                    checkpoint_uuid=checkpoint_uuid,
                    creation_time=now,
                )
            )
            row = conn.execute(select(*_VERSION_COLS).where(MV.id == _pk(res))).one()
            return _to_version(row)

    def list_model_versions(self, model_name: str) -> list[ModelVersion]:
        """The model's versions, by version number."""
        with self._read() as conn:
            model_id = self._model_id(conn, model_name)
            rows = conn.execute(
                select(*_VERSION_COLS).where(MV.model_id == model_id).order_by(MV.version)
            )
            return [_to_version(r) for r in rows]

    def get_model_version(self, model_name: str, version: int | None = None) -> ModelVersion:
        """``version`` None = the latest (highest number still registered)."""
        with self._read() as conn:
            model_id = self._model_id(conn, model_name)
            stmt = select(*_VERSION_COLS).where(MV.model_id == model_id)
            if version is None:
                stmt = stmt.order_by(MV.version.desc()).limit(1)
            else:
                stmt = stmt.where(MV.version == version)
            row = conn.execute(stmt).first()
        if row is None:
            if version is None:
                raise NotFoundError(f"model {model_name!r} has no versions")
            raise NotFoundError(f"model {model_name!r} version {version} not found")
        return _to_version(row)

    def update_model_version(
        self,
        model_name: str,
        version: int,
        *,
        name: str = _UNSET,
        comment: str = _UNSET,
        notes: str = _UNSET,
    ) -> ModelVersion:
        """Set the given fields of one version and return the new value."""
        values: dict[str, Any] = {}
        if name is not _UNSET:
            values["name"] = name
        if comment is not _UNSET:
            values["comment"] = comment
        if notes is not _UNSET:
            values["notes"] = notes
        with self._write() as conn:
            model_id = self._model_id(conn, model_name, lock=True)
            where = (MV.model_id == model_id, MV.version == version)
            if conn.scalar(select(MV.id).where(*where)) is None:
                raise NotFoundError(f"model {model_name!r} version {version} not found")
            if values:
                conn.execute(update(MV).where(*where).values(**values))
        return self.get_model_version(model_name, version)

    def delete_model_version(self, model_name: str, version: int) -> None:
        """Delete one version of the model."""
        with self._write() as conn:
            model_id = self._model_id(conn, model_name, lock=True)
            res = conn.execute(delete(MV).where(MV.model_id == model_id, MV.version == version))
            if res.rowcount == 0:
                raise NotFoundError(f"model {model_name!r} version {version} not found")
            conn.execute(
                update(ModelRow)
                .where(ModelRow.id == model_id)
                .values(last_updated_time=time.time())
            )

    # -- pending jobs --------------------------------------------------------------------------
    @staticmethod
    def _job(conn: Connection, key: str) -> PendingJob | None:
        J = PendingJobRow
        r = conn.execute(
            select(J.id, J.kind, J.key, J.payload, J.create_time).where(J.key == key)
        ).first()
        if r is None:
            return None
        return PendingJob(r[0], r[1], r[2], json.loads(r[3]), r[4])

    def _add_job(self, conn: Connection, kind: str, key: str, payload: JSONDict) -> PendingJob:
        existing = self._job(conn, key)
        if existing is not None:
            return existing
        conn.execute(
            insert(PendingJobRow).values(
                kind=kind, key=key, payload=_dumps(payload), create_time=time.time()
            )
        )
        job = self._job(conn, key)
        assert job is not None
        return job

    def add_job(self, kind: str, key: str, payload: JSONDict) -> PendingJob:
        """Record side work before it starts (idempotent per ``key``)."""
        if not kind or not key:
            raise InvalidArgumentError("job: kind and key must not be empty")
        with self._write() as conn:
            return self._add_job(conn, kind, key, payload)

    def list_jobs(self) -> list[PendingJob]:
        """Pending jobs, oldest first."""
        J = PendingJobRow
        with self._read() as conn:
            rows = conn.execute(
                select(J.id, J.kind, J.key, J.payload, J.create_time).order_by(J.id)
            ).all()
        return [PendingJob(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def finish_job(self, job_id: int) -> None:
        """Forget a finished job."""
        with self._write() as conn:
            conn.execute(delete(PendingJobRow).where(PendingJobRow.id == job_id))

    @staticmethod
    def _refuse_registered(conn: Connection, where: ColumnElement[bool], what: str) -> None:
        row = conn.execute(
            select(MV.checkpoint_uuid, ModelRow.name, MV.version)
            .join(ModelRow, ModelRow.id == MV.model_id)
            .join(C, C.uuid == MV.checkpoint_uuid)
            .where(where)
            .order_by(ModelRow.name, MV.version)
            .limit(1)
        ).first()
        if row is not None:
            raise FailedPreconditionError(
                f"{what}: checkpoint {row[0]!r} is registered as version {row[2]} of model "
                f"{row[1]!r}; delete that model version first"
            )

    def begin_checkpoint_deletion(
        self, uuids: Sequence[str], paths: Sequence[RemovalTarget]
    ) -> PendingJob:
        """Mark checkpoints DELETED and record the removal of their files, atomically."""
        uuids = sorted(set(uuids))
        if not uuids:
            raise InvalidArgumentError("uuids: give at least one checkpoint uuid")
        with self._write() as conn:
            found = conn.execute(
                select(C.uuid, C.trial_id, C.steps_completed).where(C.uuid.in_(uuids))
            ).all()
            missing = sorted(set(uuids) - {r[0] for r in found})
            if missing:
                raise NotFoundError(f"checkpoint {missing[0]!r} not found")
            self._refuse_registered(conn, C.uuid.in_(uuids), "cannot delete")
            deleted = CheckpointState.DELETED
            for uuid, trial_id, steps in sorted(found, key=lambda r: r[1]):
                conn.execute(select(T.id).where(T.id == trial_id).with_for_update())
                conn.execute(
                    update(C).where(C.uuid == uuid).values(state=deleted.value, resources="{}")
                )
                self._refresh_latest(conn, trial_id, uuid, deleted, steps)
            key = f"remove_files:checkpoints:{uuids[0]}:{len(uuids)}:{time.time_ns()}"
            return self._add_job(conn, "remove_files", key, {"paths": list(paths)})

    def begin_experiment_deletion(
        self, experiment_id: int, paths: Sequence[RemovalTarget]
    ) -> PendingJob:
        """Mark a finished experiment DELETING and record its deletion, atomically."""
        with self._write() as conn:
            exp = self._read_experiment(conn, experiment_id)
            ok = (
                ExperimentState.COMPLETED,
                ExperimentState.CANCELED,
                ExperimentState.ERROR,
                ExperimentState.DELETING,
            )
            if exp.state not in ok:
                raise FailedPreconditionError(
                    f"experiment {experiment_id} is {exp.state.value}; cancel it before deleting it"
                )
            self._refuse_registered(
                conn, C.experiment_id == experiment_id, f"experiment {experiment_id}"
            )
            conn.execute(
                update(E).where(E.id == experiment_id).values(state=ExperimentState.DELETING.value)
            )
            return self._add_job(
                conn,
                "delete_experiment",
                f"delete_experiment:{experiment_id}",
                {"experiment_id": experiment_id, "paths": list(paths)},
            )
