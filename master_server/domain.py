"""Domain values of the master: frozen dataclasses that the store returns and services use.

Nothing here knows about protobuf or SQL; ``master_server.convert`` maps these to the wire and
``master_server.store`` to the database.
"""

from __future__ import annotations

import enum
import itertools
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias, overload

import orjson

from determined_sdk.metrics_wire import (
    decode_metrics_array,
    decode_metrics_json,
    metrics_from_columns,
)

JSONDict = dict[str, Any]
#: What a removal job removes: a local path, or ``{"storage": <storage record>, "uuid": ...}``
#: for a checkpoint in object storage (the record holds no secret).
RemovalTarget = str | JSONDict


class ExperimentState(enum.Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    STOPPING_COMPLETED = "STOPPING_COMPLETED"
    STOPPING_CANCELED = "STOPPING_CANCELED"
    STOPPING_ERROR = "STOPPING_ERROR"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"


class TrialState(enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING_COMPLETED = "STOPPING_COMPLETED"
    STOPPING_CANCELED = "STOPPING_CANCELED"
    STOPPING_ERROR = "STOPPING_ERROR"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    ERROR = "ERROR"


class CheckpointState(enum.Enum):
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    PARTIALLY_DELETED = "PARTIALLY_DELETED"
    DELETED = "DELETED"
    ERROR = "ERROR"


TERMINAL_EXPERIMENT_STATES = frozenset(
    {ExperimentState.COMPLETED, ExperimentState.CANCELED, ExperimentState.ERROR}
)
TERMINAL_TRIAL_STATES = frozenset({TrialState.COMPLETED, TrialState.CANCELED, TrialState.ERROR})


@dataclass(frozen=True)
class Workspace:
    id: int
    name: str
    archived: bool = False
    num_projects: int = 0


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    workspace_id: int
    description: str = ""
    archived: bool = False
    num_experiments: int = 0
    notes: tuple[tuple[str, str], ...] = ()  # (name, contents), in order


@dataclass(frozen=True)
class NewExperiment:
    """What the service hands the store to create an experiment."""

    name: str
    config: JSONDict
    original_config: str
    project_id: int
    searcher_name: str
    state: ExperimentState
    description: str = ""
    labels: tuple[str, ...] = ()
    model_definition: bytes = b""
    unmanaged: bool = False
    #: The searcher snapshot to store with the row, in the same transaction (None: none yet).
    searcher_state: JSONDict | None = None


@dataclass(frozen=True)
class Experiment:
    id: int
    name: str
    description: str
    labels: tuple[str, ...]
    config: JSONDict
    original_config: str
    state: ExperimentState
    archived: bool
    progress: float
    project_id: int
    workspace_id: int
    start_time: float
    end_time: float | None
    searcher_name: str
    num_trials: int
    unmanaged: bool
    error: str = ""
    notes: str = ""


#: One experiment of a list reply as the store reads it, undecoded: the fields of an
#: :class:`Experiment` without its configs, in this order: id, name, description, labels (the
#: stored JSON array text), state (an :class:`ExperimentState` value), archived, progress,
#: project_id, workspace_id, start_time, end_time (None while not terminal), searcher_name,
#: num_trials, unmanaged, error, notes, and the owner's username (None if it has no owner:
#: made before users). A plain tuple from the database driver (archived and
#: unmanaged may come as 0/1): a list of 10,000 rows goes straight into the reply without an
#: object per row (see ``Store.list_experiment_summaries``).
ExperimentSummaryRow: TypeAlias = tuple[
    int,
    str,
    str,
    str,
    str,
    bool,
    float,
    int,
    int,
    float,
    float | None,
    str,
    int,
    bool,
    str,
    str,
    str | None,
]


@dataclass(frozen=True)
class ExperimentFilter:
    project_id: int | None = None
    workspace_id: int | None = None
    states: tuple[ExperimentState, ...] = ()
    name_contains: str | None = None
    labels: tuple[str, ...] = ()
    archived: bool | None = False  # None = both
    sort_by: str = "id"  # id | name | start_time | end_time | state | progress
    descending: bool = False
    offset: int = 0
    limit: int | None = None
    # False: summaries, with ``config`` {} and ``original_config`` "" (lists stay cheap).
    full: bool = True


@dataclass(frozen=True)
class Trial:
    id: int
    experiment_id: int
    request_id: str  # the searcher's id for this trial (stable across master restarts)
    hparams: JSONDict
    state: TrialState
    summary_metrics: JSONDict
    restarts: int
    run_id: int
    start_time: float
    end_time: float | None
    latest_checkpoint_uuid: str | None
    warm_start_checkpoint_uuid: str | None
    steps_completed: int
    progress: float
    exit_reason: str = ""


class MetricReport(NamedTuple):
    """One report of a batch. A NamedTuple, not a dataclass: it is built once per reported
    step on the ingestion hot path, where construction is ~2x cheaper."""

    group: str
    steps_completed: int
    metrics: dict[str, float]
    timestamp: float


@dataclass(frozen=True)
class SeriesColumns:
    """One metric's chart series (:meth:`Store.metric_series`): its points in
    ``(steps_completed, id)`` order, as packed columns.

    Attributes:
        steps: ``steps_completed`` of each point.
        times: Their report timestamps (unix seconds).
        values: Their values (NaN and +/-inf as floats).
    """

    steps: array[int]
    times: array[float]
    values: array[float]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class MetricPoint:
    trial_id: int
    group: str
    steps_completed: int
    metrics: dict[str, float]
    timestamp: float
    run_id: int = 0  # the trial run that reported it (0: unknown)
    superseded: bool = False  # a later run restarted from a checkpoint before this step


@dataclass(frozen=True)
class MetricQuery:
    """Which metric points to read: trials, then filters. Empty ``names`` means every metric."""

    trial_ids: tuple[int, ...]
    group: str | None = None
    names: tuple[str, ...] = ()
    min_steps: int | None = None
    max_steps: int | None = None
    page_size: int = 10_000
    # A follower's position: only points stored after these storage ids, per trial
    # ((trial id, last id seen) pairs; a trial left out has seen nothing).
    after_ids: tuple[tuple[int, int], ...] = ()
    until_id: int | None = None  # only points stored up to this id (a backlog's bound)
    include_superseded: bool = False  # also reports a restart from a checkpoint superseded


class JsonColumn(Sequence[Any]):
    """A column as the text of a JSON array (one entry per point), decoded on first use.

    A page that the database gathered into text keeps it so: the gRPC read passes it on as
    is (``MetricColumns.*_json``), other readers index or iterate it like a list.

    Args:
        text: The JSON array.
        n: Its length.
        unit: Each entry stands for itself times ``unit`` (timestamps travel as integers).
    """

    __slots__ = ("_items", "n", "text", "unit")

    def __init__(self, text: str, n: int, unit: float | None = None) -> None:
        self.text = text
        self.n = n
        self.unit = unit
        self._items: list[Any] | None = None

    def items(self) -> list[Any]:
        """The decoded entries (decoded once)."""
        if self._items is None:
            items: list[Any] = orjson.loads(self.text)
            if self.unit is not None:
                items = list(map(self.unit.__mul__, items))
            self._items = items
        return self._items

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        return self.items()[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonColumn):
            return self.items() == other.items()
        return isinstance(other, (list, tuple)) and self.items() == list(other)

    __hash__ = None  # type: ignore[assignment]  # a mutable cache inside

    def __repr__(self) -> str:
        return f"JsonColumn({self.items()!r})"


@dataclass(frozen=True)
class MetricColumns:
    """A page of metric points as columns, in (trial id, steps_completed, insertion) order.

    ``payloads[i]`` is point i's metrics as the stored JSON object (non-finite values are the
    strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``); readers that forward points (gRPC,
    HTTP) pass it on undecoded, :meth:`metrics` decodes it. A page whose JSON objects the
    database already joined has ``metrics_json`` (one JSON array, point i's object at index i)
    and no ``payloads``. A page read with a ``names``
    filter has no payloads but one column per name instead: ``values[k][i]`` is point i's
    value of ``names[k]`` (None where the point has no such metric). ``trial_ids``/``trial_counts``
    are run-length: the first ``trial_counts[0]`` points belong to ``trial_ids[0]``, and so on.
    ``last_ids[k]`` is the highest storage id of ``trial_ids[k]``'s points in the page (where
    a follower resumes).
    """

    trial_ids: Sequence[int]
    trial_counts: Sequence[int]
    groups: Sequence[str]
    steps: Sequence[int]
    timestamps: Sequence[float]
    payloads: Sequence[str]
    last_ids: Sequence[int]
    run_ids: Sequence[int] = ()  # per point: the trial run that reported it (0: unknown)
    superseded: Sequence[bool] = ()  # per point: superseded by a restart (see MetricPoint)
    names: Sequence[str] = ()  # a names-filtered page: the names of ``values``' columns
    values: Sequence[Sequence[float | None]] = ()  # per name, per point (None: absent)
    metrics_json: str = ""  # instead of payloads: the page's objects as one JSON array

    def __len__(self) -> int:
        return len(self.steps)

    def metrics(self) -> list[dict[str, float]]:
        """Every point's ``{name: value}``, decoded in one pass."""
        if self.names:
            return metrics_from_columns(self.names, self.values)
        if self.metrics_json:
            return decode_metrics_json(self.metrics_json)
        return decode_metrics_array(self.payloads)

    def points(self) -> Iterator[MetricPoint]:
        """The page as :class:`MetricPoint` values."""
        trials = itertools.chain.from_iterable(
            itertools.repeat(t, n) for t, n in zip(self.trial_ids, self.trial_counts, strict=True)
        )
        n = len(self.steps)
        runs = self.run_ids or itertools.repeat(0, n)
        gone = self.superseded or itertools.repeat(False, n)
        for t, g, s, m, ts, r, x in zip(
            trials,
            self.groups,
            self.steps,
            self.metrics(),
            self.timestamps,
            runs,
            gone,
            strict=True,
        ):
            yield MetricPoint(t, g, s, m, ts, run_id=r, superseded=x)


@dataclass(frozen=True)
class Checkpoint:
    uuid: str
    trial_id: int
    experiment_id: int
    state: CheckpointState
    steps_completed: int
    resources: dict[str, int]
    metadata: JSONDict
    storage: JSONDict  # {"type": "shared_fs", "path": base}; bytes live at base/uuid
    report_time: float
    training_metrics: dict[str, float] = field(default_factory=dict)
    validation_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingJob:
    """Side work recorded in the database before it starts (see ``Store.add_job``).

    Kinds: ``remove_files`` ({"paths": [...]}), ``delete_experiment`` ({"experiment_id",
    "paths"}), ``gc_experiment`` ({"experiment_id"}). Each of ``paths`` is a
    :data:`RemovalTarget`.
    """

    id: int
    kind: str
    key: str
    payload: JSONDict
    create_time: float


@dataclass(frozen=True)
class SearcherLog:
    """An experiment's persisted search (see ``Store.load_searcher_log``): the last snapshot
    (None if none was saved) and the searcher events appended after it, oldest first, as
    ``(event id, event)`` pairs."""

    snapshot: JSONDict | None
    events: list[tuple[int, JSONDict]]


@dataclass(frozen=True)
class LogLine:
    trial_id: int
    timestamp: float
    message: str
    rank: int = 0
    stream: str = "stdout"
    level: str = "INFO"  # TRACE | DEBUG | INFO | WARNING | ERROR | CRITICAL
    run_id: int = 0
    id: int = 0  # set by the store


@dataclass(frozen=True)
class LogQuery:
    trial_id: int
    after_id: int = 0
    search: str | None = None
    levels: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    streams: tuple[str, ...] = ()
    timestamp_after: float | None = None
    timestamp_before: float | None = None
    head: int | None = None  # first N matching lines
    tail: int | None = None  # last N matching lines
    regex: str | None = None  # Python regular expression, re.search on the message


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    description: str
    metadata: JSONDict
    labels: tuple[str, ...]
    archived: bool
    creation_time: float
    last_updated_time: float
    num_versions: int
    workspace_id: int


@dataclass(frozen=True)
class ModelVersion:
    id: int
    model_id: int
    version: int
    name: str
    comment: str
    metadata: JSONDict
    labels: tuple[str, ...]
    checkpoint_uuid: str
    creation_time: float
    notes: str = ""


@dataclass(frozen=True)
class User:
    """A person who logs in. ``password_hash`` is an argon2 hash, never the password."""

    id: int
    username: str
    password_hash: str
    admin: bool
    active: bool
    created_at: float


@dataclass(frozen=True)
class UserSession:
    """A login session: the SHA-256 of its token, whose it is, and when it expires."""

    token_hash: str
    user_id: int
    created_at: float
    expires_at: float
