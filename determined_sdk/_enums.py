"""The SDK's enums and their mapping to and from the wire's proto enums.

Every enum member is named as the state or option is named in the docs (``ACTIVE``,
``COMPLETED``, ...); the proto enums carry a prefix (``EXPERIMENT_STATE_ACTIVE``) that this module
adds and strips, so no other module handles proto enum numbers.
"""

from __future__ import annotations

import enum

from determined_sdk.proto import common_pb2, logs_pb2


class ExperimentState(enum.Enum):
    """States of an experiment (see ``master_server.domain``)."""

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
    UNSPECIFIED = "UNSPECIFIED"
    # Determined's finer states. This master reports an active experiment as ACTIVE whether
    # its trials run or wait, and a killed one goes straight to CANCELED; the members exist so
    # Determined code that names them runs, and filters by them match ACTIVE / CANCELED.
    RUNNING = "RUNNING"
    QUEUED = "QUEUED"
    STOPPING_KILLED = "STOPPING_KILLED"
    DELETE_FAILED = "DELETE_FAILED"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, CANCELED, ERROR and DELETED: the experiment will not run again."""
        return self in _TERMINAL_EXPERIMENT

    def _to_proto(self) -> common_pb2.ExperimentState.ValueType:
        value = _DETERMINED_ONLY.get(self.value, self.value)
        return common_pb2.ExperimentState.Value("EXPERIMENT_STATE_" + value)

    @classmethod
    def _from_proto(cls, value: common_pb2.ExperimentState.ValueType) -> ExperimentState:
        return cls(common_pb2.ExperimentState.Name(value).removeprefix("EXPERIMENT_STATE_"))


_DETERMINED_ONLY = {
    "RUNNING": "ACTIVE",
    "QUEUED": "ACTIVE",
    "STOPPING_KILLED": "STOPPING_CANCELED",
    "DELETE_FAILED": "ERROR",
}

_TERMINAL_EXPERIMENT = frozenset(
    {
        ExperimentState.COMPLETED,
        ExperimentState.CANCELED,
        ExperimentState.ERROR,
        ExperimentState.DELETED,
    }
)


class TrialState(enum.Enum):
    """States of a trial (see ``master_server.domain``)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING_COMPLETED = "STOPPING_COMPLETED"
    STOPPING_CANCELED = "STOPPING_CANCELED"
    STOPPING_ERROR = "STOPPING_ERROR"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"
    ERROR = "ERROR"
    UNSPECIFIED = "UNSPECIFIED"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, CANCELED and ERROR."""
        return self in _TERMINAL_TRIAL

    def _to_proto(self) -> common_pb2.TrialState.ValueType:
        return common_pb2.TrialState.Value("TRIAL_STATE_" + self.value)

    @classmethod
    def _from_proto(cls, value: common_pb2.TrialState.ValueType) -> TrialState:
        return cls(common_pb2.TrialState.Name(value).removeprefix("TRIAL_STATE_"))


_TERMINAL_TRIAL = frozenset({TrialState.COMPLETED, TrialState.CANCELED, TrialState.ERROR})


class CheckpointState(enum.Enum):
    """States of a checkpoint."""

    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    PARTIALLY_DELETED = "PARTIALLY_DELETED"
    DELETED = "DELETED"
    ERROR = "ERROR"
    UNSPECIFIED = "UNSPECIFIED"

    def _to_proto(self) -> common_pb2.CheckpointState.ValueType:
        return common_pb2.CheckpointState.Value("CHECKPOINT_STATE_" + self.value)

    @classmethod
    def _from_proto(cls, value: common_pb2.CheckpointState.ValueType) -> CheckpointState:
        return cls(common_pb2.CheckpointState.Name(value).removeprefix("CHECKPOINT_STATE_"))


class CheckpointSortBy(enum.Enum):
    """Predefined keys for ``list_checkpoints(sort_by=...)``.

    A plain string passed as ``sort_by`` instead names a validation metric.
    """

    UUID = "uuid"
    TRIAL_ID = "trial_id"
    BATCH_NUMBER = "steps_completed"
    END_TIME = "report_time"
    SEARCHER_METRIC = "searcher_metric"
    STATE = "state"


class ExperimentSortBy(enum.Enum):
    """Keys for ``list_experiments(sort_by=...)`` (Determined's names this master sorts by)."""

    ID = "id"
    NAME = "name"
    START_TIME = "start_time"
    END_TIME = "end_time"
    STATE = "state"
    PROGRESS = "progress"


class TrialSortBy(enum.Enum):
    """Keys for ``Experiment.list_trials(sort_by=...)`` / ``iter_trials``."""

    ID = "id"
    START_TIME = "start_time"
    END_TIME = "end_time"
    STATE = "state"
    BEST_VALIDATION_METRIC = "searcher_metric"
    BATCHES_PROCESSED = "steps_completed"
    RESTARTS = "restarts"


class ModelSortBy(enum.Enum):
    """Keys for ``get_models(sort_by=...)``."""

    NAME = "name"
    DESCRIPTION = "description"
    CREATION_TIME = "creation_time"
    LAST_UPDATED_TIME = "last_updated_time"
    NUM_VERSIONS = "num_versions"
    WORKSPACE = "workspace_id"


class OrderBy(enum.Enum):
    """Sort direction. ``ASCENDING``/``DESCENDING`` are aliases of ``ASC``/``DESC``."""

    ASC = "ASC"
    DESC = "DESC"
    ASCENDING = "ASC"
    DESCENDING = "DESC"

    def _to_proto(self) -> common_pb2.OrderBy.ValueType:
        return common_pb2.OrderBy.Value("ORDER_BY_" + self.value)


class LogLevel(enum.Enum):
    """Level of a trial log line."""

    TRACE = "TRACE"
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"
    UNSPECIFIED = "UNSPECIFIED"

    def _to_proto(self) -> logs_pb2.LogLevel.ValueType:
        return logs_pb2.LogLevel.Value("LOG_LEVEL_" + self.value)

    @classmethod
    def _from_proto(cls, value: logs_pb2.LogLevel.ValueType) -> LogLevel:
        return cls(logs_pb2.LogLevel.Name(value).removeprefix("LOG_LEVEL_"))

    @classmethod
    def _parse(cls, value: LogLevel | str) -> LogLevel:
        """Accept a member or its name, case-insensitive (``"warning"``, ``"WARN"``)."""
        if isinstance(value, LogLevel):
            return value
        name = value.strip().upper().removeprefix("LOG_LEVEL_")  # Determined's wire names
        if name == "WARN":
            name = "WARNING"
        try:
            return cls(name)
        except ValueError:
            from determined_sdk.errors import InvalidArgumentError

            choices = ", ".join(m.value for m in cls if m is not cls.UNSPECIFIED)
            raise InvalidArgumentError(
                f"levels: unknown log level {value!r} (choose from {choices})"
            ) from None


class DownloadMode(enum.Enum):
    """How :meth:`Checkpoint.download` gets the bytes.

    ``AUTO`` copies directly from the checkpoint storage when this machine can reach it and
    otherwise streams through the master; ``DIRECT`` only copies directly; ``MASTER`` always
    streams through the master.
    """

    AUTO = "auto"
    DIRECT = "direct"
    MASTER = "master"
