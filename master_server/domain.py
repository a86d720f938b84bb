"""Domain values of the master: frozen dataclasses that the store returns and services use.

Nothing here knows about protobuf or SQL; ``master_server.convert`` maps these to the wire and
``master_server.store`` to the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

JSONDict = dict[str, Any]


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
class MetricPoint:
    trial_id: int
    group: str
    steps_completed: int
    metrics: dict[str, float]
    timestamp: float


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
