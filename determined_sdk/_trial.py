"""The :class:`Trial` resource, its logs and its metrics."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from determined_sdk import errors
from determined_sdk._checkpoint import Checkpoint, list_checkpoints
from determined_sdk._enums import CheckpointSortBy, LogLevel, OrderBy, TrialState
from determined_sdk._resource import (
    Resource,
    SessionLike,
    check_id,
    check_limit,
    deprecated,
    str_list,
)
from determined_sdk._session import Session
from determined_sdk.log_levels import parse_prefix
from determined_sdk.metrics_wire import page_columns, unpack_column
from determined_sdk.proto import logs_pb2, trial_pb2

if TYPE_CHECKING:
    import pandas


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a trial's output. ``str(line)`` is the message.

    Attributes:
        id: Increasing per trial, set by the master.
        trial_id: The trial.
        timestamp: Unix seconds.
        rank: Process rank (0 unless distributed).
        stream: ``stdout``, ``stderr`` or ``master``.
        level: Log level.
        message: The text, without a trailing newline.
        run_id: Which run of the trial (1 + restarts) wrote it.
    """

    id: int
    trial_id: int
    timestamp: float
    rank: int
    stream: str
    level: LogLevel
    message: str
    run_id: int

    def __str__(self) -> str:
        return self.message

    def format(self) -> str:
        """``"<ISO time> [rank=R] LEVEL    message"``, as the CLI prints it.

        A message that starts with its own level (``INFO: [12] name: ...``, as
        ``core_api.LOG_FORMAT`` writes it) is printed without it, so the level shows once.
        """
        ts = datetime.datetime.fromtimestamp(self.timestamp).isoformat(timespec="milliseconds")
        message = self.message
        level, end = parse_prefix(message)
        if level == self.level.value:
            message = message[end:]
        return f"{ts} [rank={self.rank}] {self.level.value:<8} {message}"

    @classmethod
    def _from_proto(cls, m: logs_pb2.LogLine) -> LogLine:
        return cls(
            id=m.id,
            trial_id=m.trial_id,
            timestamp=m.timestamp,
            rank=m.rank,
            stream=m.stream,
            level=LogLevel._from_proto(m.level),
            message=m.message,
            run_id=m.run_id,
        )


class _TrialMetricsFields(NamedTuple):
    trial_id: int
    trial_run_id: int
    steps_completed: int
    timestamp: float
    metrics: dict[str, Any]
    group: str
    batch_metrics: list[dict[str, Any]] | None


class TrialMetrics(_TrialMetricsFields):
    """One metric report of a trial, shaped as Determined's; immutable.

    Attributes:
        trial_id: The trial.
        trial_run_id: The run of the trial (1 + restarts) that reported it.
        steps_completed: Training steps done at the report.
        end_time: When it was reported (the trial's clock), timezone-aware UTC.
        timestamp: ``end_time`` as unix seconds.
        metrics: Metric name -> value.
        group: ``"training"``, ``"validation"`` or a user group.
        batch_metrics: Per-batch metrics (Determined's; never set here).

    It is a named tuple of those fields (``end_time`` as ``timestamp``), equal only to another
    ``TrialMetrics`` and not ordered.
    """

    # Streams build a million of these: as a tuple, a page's points are made in C from its
    # columns (``tuple.__new__`` over ``zip``, :func:`_trial_metrics_from_columns`), three
    # times as fast as setting slots one by one; the report time stays unix seconds until
    # ``end_time`` is read.
    __slots__ = ()

    def __new__(
        cls,
        trial_id: int,
        trial_run_id: int,
        steps_completed: int,
        end_time: datetime.datetime,
        metrics: dict[str, Any],
        group: str,
        batch_metrics: list[dict[str, Any]] | None = None,
    ) -> TrialMetrics:
        return super().__new__(
            cls,
            trial_id,
            trial_run_id,
            steps_completed,
            end_time.timestamp(),
            metrics,
            group,
            batch_metrics,
        )

    @property
    def end_time(self) -> datetime.datetime:
        """When it was reported, timezone-aware UTC."""
        return datetime.datetime.fromtimestamp(self.timestamp, tz=datetime.UTC)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:  # a plain tuple is not one (unlike tuples)
            return False if isinstance(other, tuple) else NotImplemented
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:  # a plain tuple is not one (unlike tuples)
            return True if isinstance(other, tuple) else NotImplemented
        return tuple.__ne__(self, other)

    def __lt__(self, other: object) -> bool:
        return NotImplemented

    __le__ = __gt__ = __ge__ = __lt__
    __hash__ = None  # type: ignore[assignment]  # metrics is a dict

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy: the fields, in order
        return _trial_metrics_from_fields, (tuple(self),)

    def __repr__(self) -> str:
        return (
            f"TrialMetrics(trial_id={self.trial_id!r}, trial_run_id={self.trial_run_id!r}, "
            f"steps_completed={self.steps_completed!r}, end_time={self.end_time!r}, "
            f"metrics={self.metrics!r}, group={self.group!r}, "
            f"batch_metrics={self.batch_metrics!r})"
        )


_new_tuple = tuple.__new__


def _trial_metrics_from_fields(fields: Iterable[Any]) -> TrialMetrics:
    """A :class:`TrialMetrics` from its seven fields, in order (what pickle keeps)."""
    out: TrialMetrics = _new_tuple(TrialMetrics, fields)
    if len(out) != len(_TrialMetricsFields._fields):
        raise TypeError(f"TrialMetrics: {len(out)} fields, expected 7")
    return out


def _trial_metrics_from_columns(
    trials: Iterable[int],
    groups: Iterable[str],
    steps: Iterable[int],
    metrics: Iterable[dict[str, float]],
    stamps: Iterable[float],
    runs: Iterable[int],
) -> Iterator[TrialMetrics]:
    """One :class:`TrialMetrics` per point of equally long columns, each made in C (no
    Python call per point)."""
    fields = zip(trials, runs, steps, stamps, metrics, groups, itertools.repeat(None))
    return map(_new_tuple, itertools.repeat(TrialMetrics), fields)


def _new_trial_metrics(
    t: int, g: str, s: int, m: dict[str, float], ts: float, run: int
) -> TrialMetrics:
    """One point's :class:`TrialMetrics` (arguments in :func:`page_columns` order)."""
    out: TrialMetrics = _new_tuple(TrialMetrics, (t, run, s, ts, m, g, None))
    return out


def _steps_bound(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.InvalidArgumentError(f"{what}: must be an int >= 0, got {value!r}")
    return value


def iter_metrics(
    session: Session,
    trial_ids: Sequence[int],
    group: str | None,
    page_size: int = 0,
    *,
    names: Iterable[str] | None = None,
    min_steps: int | None = None,
    max_steps: int | None = None,
    follow: bool = False,
) -> Iterator[TrialMetrics]:
    """Stream metric reports of trials from the master, page by page, in steps order."""
    ids = [check_id(t, "trial_ids") for t in trial_ids]
    if not ids:
        raise errors.InvalidArgumentError("trial_ids: must name at least one trial")
    if group is not None and not isinstance(group, str):
        raise errors.InvalidArgumentError(f"group: must be a string, got {group!r}")
    req = trial_pb2.StreamMetricsRequest(
        trial_ids=ids,
        group=group or "",
        page_size=page_size,
        names=str_list(names, "names"),
        min_steps=_steps_bound(min_steps, "min_steps"),
        max_steps=_steps_bound(max_steps, "max_steps"),
        follow=bool(follow),
        columnar=True,
        json_columns=True,
    )
    return _stream_metrics(session, req)


def _stream_metrics(
    session: Session, req: trial_pb2.StreamMetricsRequest
) -> Iterator[TrialMetrics]:
    # A followed stream may stay open for the whole run of a trial: no deadline.
    current: dict[int, int] = {}  # the trial's current run, for points that do not name theirs

    def run_of(trial_id: int) -> int:
        if trial_id not in current:
            got = session.get_trial(trial_pb2.GetTrialRequest(trial_id=trial_id)).trial
            current[trial_id] = got.run_id or 1
        return current[trial_id]

    build = _new_trial_metrics
    for page in session.stream_metrics(req):
        if page.HasField("columns"):
            cols = page.columns
            trials, groups, steps, metrics, stamps, runs = page_columns(cols)
            if not isinstance(runs, list) or not any(runs):  # no point names its run
                runs = itertools.chain.from_iterable(
                    map(itertools.repeat, map(run_of, cols.trial_ids), cols.trial_counts)
                )
            elif 0 in runs:
                trials = list(trials)
                runs = [r or run_of(t) for t, r in zip(trials, runs, strict=True)]
            yield from _trial_metrics_from_columns(trials, groups, steps, metrics, stamps, runs)
        for p in page.points:  # masters before the columnar reply
            run = int(p.trial_run_id) or run_of(p.trial_id)
            yield build(p.trial_id, p.group, p.steps_completed, dict(p.metrics), p.timestamp, run)


@dataclass(frozen=True, slots=True, eq=False)
class MetricSeries:
    """One metric of one trial as columns, ready for a chart (what W&B's ``run.history(keys=)``
    or MLflow's ``get_metric_history`` give): point ``i`` is ``(steps[i], timestamps[i],
    values[i])``.

    With every point (no ``max_points``) the columns hold exactly the points
    ``iter_metrics(group, names=[name])`` yields for the name (not superseded, in steps order),
    its ``steps_completed``, ``timestamp`` and ``metrics[name]``. The arrays are
    :class:`array.array` (``numpy.asarray`` takes them without a copy) and are yours to change.

    Attributes:
        trial_id: The trial.
        group: The metric group.
        name: The metric name.
        steps: ``steps_completed`` of each point (``array("q")``).
        timestamps: Each point's report time, unix seconds (``array("d")``).
        values: Each point's value (``array("d")``; NaN and infinities as such).
        total_points: Points of the whole series; more than ``len(values)`` when it was
            downsampled to ``max_points``.
    """

    trial_id: int
    group: str
    name: str
    steps: array[int]
    timestamps: array[float]
    values: array[float]
    total_points: int

    def __len__(self) -> int:
        return len(self.values)

    @property
    def downsampled(self) -> bool:
        """Whether points were left out (``max_points`` was below ``total_points``)."""
        return self.total_points > len(self.values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricSeries):
            return NotImplemented
        return (
            (self.trial_id, self.group, self.name, self.total_points)
            == (other.trial_id, other.group, other.name, other.total_points)
            and self.steps == other.steps
            and self.timestamps == other.timestamps
            # NaN is a value like any other here: compare the stored bytes.
            and self.values.tobytes() == other.values.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]  # the arrays are mutable

    def __repr__(self) -> str:
        return (
            f"MetricSeries(trial_id={self.trial_id}, group={self.group!r}, name={self.name!r}, "
            f"points={len(self.values)}, total_points={self.total_points})"
        )


def _names(names: Iterable[str] | str, what: str = "names") -> list[str]:
    out = list(dict.fromkeys(str_list(names, what)))
    if not out:
        raise errors.InvalidArgumentError(f"{what}: give at least one metric name")
    return out


def _max_points(value: int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 4:
        raise errors.InvalidArgumentError(
            f"max_points: must be None (every point) or an int >= 4, got {value!r}"
        )
    return value


def metric_series(
    session: Session,
    trial_ids: Sequence[int],
    names: Iterable[str] | str,
    group: str,
    max_points: int | None,
) -> dict[int, dict[str, MetricSeries]]:
    """Per trial (in the order given), per name (in the order given) its :class:`MetricSeries`
    (empty where the trial has no point of the name), read with ``StreamMetricSeries``."""
    ids = list(dict.fromkeys(check_id(t, "trial_ids") for t in trial_ids))
    if not ids:
        raise errors.InvalidArgumentError("trial_ids: give at least one trial id")
    if not isinstance(group, str) or not group:
        raise errors.InvalidArgumentError(f"group: must be a non-empty string, got {group!r}")
    wanted = _names(names)
    req = trial_pb2.StreamMetricSeriesRequest(
        trial_ids=ids, group=group, names=wanted, max_points=_max_points(max_points)
    )
    # Per (trial, name): the packed pieces, and the total before downsampling.
    pieces: dict[tuple[int, str], tuple[list[bytes], list[bytes], list[bytes], list[int]]] = {}
    for resp in session.stream_metric_series(req):
        for m in resp.series:
            p = pieces.get((m.trial_id, m.name))
            if p is None:
                p = pieces[(m.trial_id, m.name)] = ([], [], [], [m.total_points])
            p[0].append(m.steps_completed)
            p[1].append(m.timestamps)
            p[2].append(m.values)
    out: dict[int, dict[str, MetricSeries]] = {}
    for tid in ids:
        by_name = out[tid] = {}
        for name in wanted:
            s, t, v, total = pieces.get((tid, name), ((), (), (), [0]))
            by_name[name] = MetricSeries(
                tid,
                group,
                name,
                unpack_column("q", s),
                unpack_column("d", t),
                unpack_column("d", v),
                total[0],
            )
    return out


def _rank(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.InvalidArgumentError(f"rank_ids: must be integers >= 0, got {value!r}")
    return value


def _check_regex(regex: str | None) -> str:
    if regex is None:
        return ""
    if not isinstance(regex, str):
        raise errors.InvalidArgumentError(f"regex: must be a string, got {regex!r}")
    try:
        re.compile(regex)
    except re.error as e:
        raise errors.InvalidArgumentError(f"regex: not a valid regular expression ({e})") from None
    return regex


def _timestamp(value: float | datetime.datetime | None, what: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise errors.InvalidArgumentError(
            f"{what}: must be a datetime or unix seconds >= 0, got {value!r}"
        )
    return float(value)


class Trial(Resource[trial_pb2.Trial]):
    """A trial: one set of hyperparameters trained by one experiment.

    ``Trial(trial_id, session)`` builds a blank object without a request; :meth:`kill`,
    :meth:`logs`, :meth:`iter_metrics` and :meth:`list_checkpoints` work on it without
    fetching, and reading a cached attribute fetches it once. Cached attributes (refreshed
    only by :meth:`reload`): ``experiment_id``, ``hparams``, ``state``, ``summary_metrics``,
    ``restarts``, ``run_id``, ``start_time``, ``end_time``, ``steps_completed``, ``progress``,
    ``searcher_metric``, ``latest_checkpoint_uuid``, ``warm_start_checkpoint_uuid``,
    ``exit_reason``.

    Args:
        trial_id: The trial's id.
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
    """

    def __init__(self, trial_id: int, session: SessionLike | None = None) -> None:
        super().__init__(session)
        self.id = check_id(trial_id, "trial_id")

    @classmethod
    def _from_proto(cls, msg: trial_pb2.Trial, session: Session) -> Trial:
        t = cls(msg.id, session)
        t._set(msg)
        return t

    def _fetch(self) -> trial_pb2.Trial:
        return self._session.get_trial(trial_pb2.GetTrialRequest(trial_id=self.id)).trial

    # -- cached attributes ------------------------------------------------------------------
    @property
    def experiment_id(self) -> int:
        """Id of its experiment (cached)."""
        return self._m().experiment_id

    @property
    def hparams(self) -> dict[str, Any]:
        """Hyperparameter values (cached; they never change)."""
        hparams: dict[str, Any] = self._json("hparams_json")
        return hparams

    @property
    def state(self) -> TrialState:
        """State (cached: call :meth:`reload` to see a change)."""
        return TrialState._from_proto(self._m().state)

    @property
    def summary_metrics(self) -> dict[str, Any]:
        """Per group, per metric ``{"min", "max", "last", "count", "mean"}`` (cached).

        Training metrics are under ``"avg_metrics"``, validation metrics under
        ``"validation_metrics"``, other groups under their own name.
        """
        summary: dict[str, Any] = self._json("summary_metrics_json")
        return summary

    @property
    def restarts(self) -> int:
        """How many times it was restarted after a failure (cached)."""
        return self._m().restarts

    @property
    def run_id(self) -> int:
        """Current run number, 1 + restarts and resumes (cached)."""
        return self._m().run_id

    @property
    def start_time(self) -> float:
        """Unix time it was created (cached)."""
        return self._m().start_time

    @property
    def end_time(self) -> float | None:
        """Unix time it ended, None while it runs (cached)."""
        return self._m().end_time or None

    @property
    def steps_completed(self) -> int:
        """Highest steps_completed it reported (cached)."""
        return self._m().steps_completed

    @property
    def progress(self) -> float:
        """0..1 within its searcher work (cached)."""
        return self._m().progress

    @property
    def searcher_metric(self) -> float | None:
        """Best value of the searcher metric so far, None before the first (cached)."""
        m = self._m()
        return m.searcher_metric if m.has_searcher_metric else None

    @property
    def exit_reason(self) -> str:
        """Early-exit reason or error summary, empty if none (cached)."""
        return self._m().exit_reason

    @property
    def latest_checkpoint_uuid(self) -> str | None:
        """UUID of its latest completed checkpoint, None if none (cached)."""
        return self._m().latest_checkpoint_uuid or None

    @property
    def warm_start_checkpoint_uuid(self) -> str | None:
        """UUID of the checkpoint it started from, None if none (cached)."""
        return self._m().warm_start_checkpoint_uuid or None

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        """Its latest completed checkpoint as a blank :class:`Checkpoint`, None if none.

        The uuid is cached; the checkpoint's own attributes are fetched when first read.
        """
        uuid = self.latest_checkpoint_uuid
        return Checkpoint(uuid, self._session) if uuid else None

    # -- calls ------------------------------------------------------------------------------
    def kill(self) -> None:
        """Stop the trial now (the experiment goes on with its other trials).

        Raises:
            NotFoundError: The trial does not exist.
        """
        self._session.kill_trial(trial_pb2.KillTrialRequest(trial_id=self.id))

    def logs(
        self,
        follow: bool = False,
        *,
        head: int | None = None,
        tail: int | None = None,
        container_ids: Iterable[str] | None = None,
        rank_ids: Iterable[int] | None = None,
        stdtypes: Iterable[str] | None = None,
        min_level: LogLevel | str | None = None,
        timestamp_before: float | datetime.datetime | None = None,
        timestamp_after: float | datetime.datetime | None = None,
        search_text: str | None = None,
    ) -> Iterator[str]:
        """The trial's log lines as strings (each ending in a newline), oldest first, with
        Determined's arguments. :meth:`iter_log_lines` gives structured lines.

        With ``follow=True`` the iterator keeps streaming new lines as the trial writes them
        and ends when the trial ends. The request is sent when iteration starts.

        Args:
            follow: Keep streaming until the trial ends.
            head: Only the first N matching lines.
            tail: Only the last N matching lines (with ``follow``: then the new ones).
            container_ids: Accepted for Determined's signature; a local trial runs in one
                container, so every line matches.
            rank_ids: Only these process ranks.
            stdtypes: Only these streams (``stdout``, ``stderr``, ``master``).
            min_level: Only lines at this level or above (``LogLevel`` or a name).
            timestamp_before: Only lines written before this time.
            timestamp_after: Only lines written after this time.
            search_text: Only lines containing this substring.

        Returns:
            An iterator of strings.

        Raises:
            InvalidArgumentError: Both ``head`` and ``tail``, a negative count, an unknown
                level.
            NotFoundError: The trial does not exist (raised on first ``next``).
        """
        str_list(container_ids, "container_ids")
        levels = None
        if min_level is not None:
            floor = LogLevel._parse(min_level)
            if floor is not LogLevel.UNSPECIFIED:
                order = [lv for lv in LogLevel if lv is not LogLevel.UNSPECIFIED]
                levels = order[order.index(floor) :]
        lines = self.iter_log_lines(
            follow,
            head=head,
            tail=tail,
            search=search_text,
            levels=levels,
            timestamp_after=timestamp_after,
            timestamp_before=timestamp_before,
            ranks=rank_ids,
            streams=stdtypes,
        )
        return (line.message + "\n" for line in lines)

    def iter_logs(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        """Same as :meth:`logs` (Determined's other name for it)."""
        return self.logs(*args, **kwargs)

    def iter_log_lines(
        self,
        follow: bool = False,
        *,
        head: int | None = None,
        tail: int | None = None,
        search: str | None = None,
        levels: Iterable[LogLevel | str] | None = None,
        timestamp_after: float | datetime.datetime | None = None,
        timestamp_before: float | datetime.datetime | None = None,
        ranks: Iterable[int] | None = None,
        streams: Iterable[str] | None = None,
        regex: str | None = None,
    ) -> Iterator[LogLine]:
        """The trial's log lines as :class:`LogLine` objects (rank, stream, level, time),
        oldest first.

        With ``follow=True`` the iterator keeps streaming new lines as the trial writes them
        and ends when the trial ends; it yields exactly the lines a later full read yields.
        The request is sent when iteration starts.

        Args:
            follow: Keep streaming until the trial ends.
            head: Only the first N matching lines.
            tail: Only the last N matching lines (with ``follow``: then the new ones).
            search: Only lines containing this substring.
            levels: Only these levels (``LogLevel`` or names such as ``"ERROR"``).
            timestamp_after: Only lines written after this time.
            timestamp_before: Only lines written before this time.
            ranks: Only these process ranks.
            streams: Only these streams (``stdout``, ``stderr``, ``master``).
            regex: Only lines in which this regular expression matches (``re.search``).

        Returns:
            An iterator of :class:`LogLine` (``str(line)`` is the message).

        Raises:
            InvalidArgumentError: Both ``head`` and ``tail``, a negative count, an unknown
                level, a regex that does not compile.
            NotFoundError: The trial does not exist (raised on first ``next``).
        """
        if head is not None and tail is not None:
            raise errors.InvalidArgumentError("head and tail: give at most one of them")
        req = logs_pb2.TrialLogsRequest(
            trial_id=self.id,
            follow=bool(follow),
            head=check_limit(head, "head"),
            tail=check_limit(tail, "tail"),
            search=search or "",
            levels=[LogLevel._parse(lv)._to_proto() for lv in levels or ()],
            timestamp_after=_timestamp(timestamp_after, "timestamp_after"),
            timestamp_before=_timestamp(timestamp_before, "timestamp_before"),
            ranks=[_rank(r) for r in ranks or ()],
            streams=str_list(streams, "streams"),
            regex=_check_regex(regex),
        )
        if head == 0 or tail == 0:
            return iter(())
        return self._stream_logs(req)

    def _stream_logs(self, req: logs_pb2.TrialLogsRequest) -> Iterator[LogLine]:
        for resp in self._session.trial_logs(req):
            for line in resp.lines:
                yield LogLine._from_proto(line)

    def iter_metrics(
        self,
        group: str | None = None,
        *,
        names: Iterable[str] | None = None,
        min_steps: int | None = None,
        max_steps: int | None = None,
        follow: bool = False,
    ) -> Iterator[TrialMetrics]:
        """Every metric report of this trial, in steps order, streamed lazily in pages.

        Args:
            group: ``"training"``, ``"validation"``, a user group, or None for all.
            names: Only these metrics (reports with none of them are left out).
            min_steps: Only reports with ``steps_completed >= min_steps``.
            max_steps: Only reports with ``steps_completed <= max_steps``.
            follow: After the stored reports, keep yielding new ones as the trial reports
                them, until the trial ends (for live plots in a notebook).

        Returns:
            An iterator of :class:`TrialMetrics`.

        Raises:
            InvalidArgumentError: A bad name or steps bound.
            NotFoundError: The trial does not exist (raised on first ``next``).
        """
        return iter_metrics(
            self._session,
            [self.id],
            group,
            names=names,
            min_steps=min_steps,
            max_steps=max_steps,
            follow=follow,
        )

    @overload
    def metric_series(  # type: ignore[overload-overlap]  # a str is one name, not names
        self, names: str, group: str = "training", *, max_points: int | None = None
    ) -> MetricSeries: ...
    @overload
    def metric_series(
        self, names: Iterable[str], group: str = "training", *, max_points: int | None = None
    ) -> dict[str, MetricSeries]: ...
    def metric_series(
        self,
        names: Iterable[str] | str,
        group: str = "training",
        *,
        max_points: int | None = None,
    ) -> MetricSeries | dict[str, MetricSeries]:
        """The points of one or more metrics as columns, for a chart (W&B's
        ``run.history(keys=...)``, MLflow's ``get_metric_history``).

        Served from the master's packed per-metric series (a few rows per series, not a row
        per point): much faster than :meth:`iter_metrics` for the same points. With every
        point the columns are exactly what ``iter_metrics(group, names=[name])`` yields for
        each name (not superseded, in steps order).

        Args:
            names: A metric name (returns its :class:`MetricSeries`) or several (returns a
                dict by name, in the order given).
            group: ``"training"``, ``"validation"`` or a group the trial reported.
            max_points: None for every point; else at most this many per series (4 to
                100,000), downsampled as the web UI's charts are: per bucket of consecutive
                points the smallest and the largest value, and the first and last points.

        Returns:
            A :class:`MetricSeries` (empty if the trial has no point of that name), or a dict
            of them by name.

        Raises:
            InvalidArgumentError: No names, a bad name, ``max_points`` or an unknown group.
            NotFoundError: The trial does not exist.
        """
        got = metric_series(self._session, [self.id], names, group, max_points)[self.id]
        return got[names] if isinstance(names, str) else got

    def metrics_dataframe(
        self, group: str | None = None, *, names: Iterable[str] | None = None
    ) -> pandas.DataFrame:
        """This trial's metric reports as a pandas DataFrame (needs the ``pandas`` extra).

        Args:
            group: ``"training"``, ``"validation"``, a user group, or None for all.
            names: Only these metrics.

        Returns:
            One row per report in steps order: ``trial_id``, ``group``, ``steps_completed``,
            ``timestamp`` (UTC), then one float column per metric name (NaN where a report
            lacks it).

        Raises:
            FailedPreconditionError: pandas is not installed (the message names the extra).
            NotFoundError: The trial does not exist.
        """
        from determined_sdk._dataframes import metrics_dataframe, require_pandas

        require_pandas()
        return metrics_dataframe(self.iter_metrics(group, names=names))

    def stream_metrics(self, group: str | None = None) -> Iterator[TrialMetrics]:
        """Deprecated (as in Determined): use :meth:`iter_metrics`."""
        deprecated("Trial.stream_metrics()", "Trial.iter_metrics()")
        return self.iter_metrics(group)

    def list_checkpoints(
        self,
        sort_by: str | CheckpointSortBy | None = None,
        order_by: OrderBy | None = None,
        max_results: int | None = None,
    ) -> list[Checkpoint]:
        """This trial's checkpoints (every state, DELETED included), sorted on the master.

        Args:
            sort_by: A :class:`CheckpointSortBy`, or a str naming a validation metric. None
                sorts by the searcher metric.
            order_by: Direction; None lets the master decide (best-first for the searcher
                metric, using the experiment's ``smaller_is_better``).
            max_results: At most this many (None: all).

        Returns:
            A list of hydrated :class:`Checkpoint` objects.

        Raises:
            InvalidArgumentError: Bad ``sort_by``/``order_by``/``max_results``.
            NotFoundError: The trial does not exist.
        """
        return list_checkpoints(
            self._session,
            trial_id=self.id,
            sort_by=sort_by,
            order_by=order_by,
            max_results=max_results,
        )

    # -- deprecated -------------------------------------------------------------------------
    def get_checkpoints(
        self,
        sort_by: str | CheckpointSortBy | None = None,
        order_by: OrderBy | None = None,
        max_results: int | None = None,
    ) -> list[Checkpoint]:
        """Deprecated: use :meth:`list_checkpoints`."""
        deprecated("Trial.get_checkpoints()", "Trial.list_checkpoints()")
        return self.list_checkpoints(sort_by=sort_by, order_by=order_by, max_results=max_results)

    def top_checkpoint(
        self, sort_by: str | None = None, smaller_is_better: bool | None = None
    ) -> Checkpoint:
        """Deprecated: use ``list_checkpoints(sort_by=..., order_by=..., max_results=1)``."""
        deprecated("Trial.top_checkpoint()", "Trial.list_checkpoints(max_results=1)")
        return self._select_best(sort_by, smaller_is_better)

    def select_checkpoint(
        self,
        latest: bool = False,
        best: bool = False,
        uuid: str | None = None,
        sort_by: str | None = None,
        smaller_is_better: bool | None = None,
    ) -> Checkpoint | None:
        """Deprecated: use :meth:`list_checkpoints` (or ``Checkpoint(uuid, session)``).

        Exactly one of ``latest``, ``best``, ``uuid`` must be given.
        """
        deprecated("Trial.select_checkpoint()", "Trial.list_checkpoints()")
        if sum((bool(latest), bool(best), uuid is not None)) != 1:
            raise errors.InvalidArgumentError(
                "select_checkpoint: give exactly one of latest, best, uuid"
            )
        if uuid is not None:
            ckpt = Checkpoint(uuid, self._session)
            ckpt.reload()
            return ckpt
        if latest:
            found = self.list_checkpoints(
                sort_by=CheckpointSortBy.BATCH_NUMBER, order_by=OrderBy.DESC, max_results=1
            )
            return found[0] if found else None
        return self._select_best(sort_by, smaller_is_better)

    def _select_best(self, sort_by: str | None, smaller_is_better: bool | None) -> Checkpoint:
        order = None if smaller_is_better is None else _order(smaller_is_better)
        found = self.list_checkpoints(sort_by=sort_by, order_by=order, max_results=1)
        if not found:
            raise errors.NotFoundError(f"trial {self.id} has no checkpoints")
        return found[0]

    def __repr__(self) -> str:
        return f"Trial(id={self.id})"


def _order(smaller_is_better: bool) -> OrderBy:
    return OrderBy.ASC if smaller_is_better else OrderBy.DESC
