"""SQLAlchemy table definitions of the master's database (declarative, 2.0 style).

These classes describe the schema; :mod:`master_server.store.sql` queries them with Core-style
statements on plain connections (no ORM session, no identity map) and maps rows to the frozen
values of :mod:`master_server.domain`. The schema itself is created and evolved only by the
Alembic revisions under ``master_server/store/migrations``; a conformance test checks that the
migrated database and these definitions agree.

Conventions:

* JSON values are ``TEXT`` columns holding JSON written by the store (portable across SQLite
  and PostgreSQL). Metric values inside JSON encode NaN and +/-infinity as the strings
  ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.
* Times are unix seconds as double precision floats.
* Tables whose ids users see use SQLite ``AUTOINCREMENT`` so a deleted id is never reused.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: A 64-bit key on PostgreSQL that is still SQLite's rowid alias (``INTEGER PRIMARY KEY``).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base holding the shared :class:`~sqlalchemy.MetaData`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WorkspaceRow(Base):
    """A workspace: the top of the project tree."""

    __tablename__ = "workspaces"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)


class ProjectRow(Base):
    """A project inside a workspace; experiments live in projects."""

    __tablename__ = "projects"
    __table_args__ = (
        UniqueConstraint("workspace_id", "name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    notes: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # [[name, text]]


class ExperimentRow(Base):
    """An experiment; ``config`` and ``model_definition`` never change after creation."""

    __tablename__ = "experiments"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON list, in given order
    config: Mapped[str] = mapped_column(Text)  # JSON
    original_config: Mapped[str] = mapped_column(Text)
    model_definition: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(32), index=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[float] = mapped_column(Double, default=0.0)
    start_time: Mapped[float] = mapped_column(Double)
    end_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    searcher_name: Mapped[str] = mapped_column(Text)
    unmanaged: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")


class ExperimentLabelRow(Base):
    """One label of one experiment, for filtering experiments by label in SQL."""

    __tablename__ = "experiment_labels"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(Text, primary_key=True, index=True)


class SearcherStateRow(Base):
    """The last searcher snapshot saved for an experiment; it covers the experiment's
    searcher events up to ``events_through`` (those rows are deleted when it is written)."""

    __tablename__ = "searcher_states"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(Text)  # JSON
    update_time: Mapped[float] = mapped_column(Double)
    events_through: Mapped[int] = mapped_column(BigInteger, server_default="0")


class SearcherEventRow(Base):
    """One searcher event since the experiment's last snapshot (an append-only log)."""

    __tablename__ = "searcher_events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)  # increasing: replay order
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(Text)  # JSON


class TrialRow(Base):
    """A trial of an experiment, with its metric summary kept up to date by ``add_metrics``."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("experiment_id", "request_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    request_id: Mapped[str] = mapped_column(Text)
    hparams: Mapped[str] = mapped_column(Text)  # JSON
    state: Mapped[str] = mapped_column(String(32))
    summary_metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON, as returned
    # JSON {summary key: {metric: [number of non-NaN values, their sum]}}: what the running
    # mean needs beyond the public summary (whose "count" includes NaN values).
    summary_state: Mapped[str] = mapped_column(Text, default="{}")
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[int] = mapped_column(Integer, default=0)
    start_time: Mapped[float] = mapped_column(Double)
    end_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    latest_checkpoint_uuid: Mapped[str | None] = mapped_column(Text, nullable=True)
    warm_start_checkpoint_uuid: Mapped[str | None] = mapped_column(Text, nullable=True)
    steps_completed: Mapped[int] = mapped_column(BigInteger, default=0)
    progress: Mapped[float] = mapped_column(Double, default=0.0)
    exit_reason: Mapped[str] = mapped_column(Text, default="")


class LogBatchRow(Base):
    """A log batch id already stored for a trial (makes ``add_logs`` retries no-ops)."""

    __tablename__ = "log_batches"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    batch_id: Mapped[str] = mapped_column(Text, primary_key=True)


class MetricBatchRow(Base):
    """A metric batch id already stored for a trial (makes ``add_metrics`` retries no-ops)."""

    __tablename__ = "metric_batches"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    batch_id: Mapped[str] = mapped_column(Text, primary_key=True)


class MetricRow(Base):
    """One metric report: all values of one group at one step, as compact JSON."""

    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_trial_group_steps", "trial_id", "metric_group", "steps_completed", "id"),
        Index("ix_metrics_trial_steps", "trial_id", "steps_completed", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    metric_group: Mapped[str] = mapped_column(Text)
    steps_completed: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[float] = mapped_column(Double)
    payload: Mapped[str] = mapped_column(Text)  # JSON {name: value}
    run_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A later run of the trial restarted from a checkpoint before this step.
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class MetricSeriesStateRow(Base):
    """Per trial and metric group: whether ``metric_series`` holds its points (see
    :mod:`master_server.store.metric_series`)."""

    __tablename__ = "metric_series_state"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    metric_group: Mapped[str] = mapped_column(Text, primary_key=True)
    # The segments hold exactly the group's points a reader sees; else rebuild them first.
    complete: Mapped[bool] = mapped_column(Boolean)
    last_steps: Mapped[int] = mapped_column(BigInteger)  # highest step in segments (-1: none)
    # Every point up to this metric id is in segments; the later ones are the series' tail.
    last_id: Mapped[int] = mapped_column(BigInteger)
    next_seq: Mapped[int] = mapped_column(Integer)  # seq of the next segment of the group
    tails: Mapped[str] = mapped_column(Text)  # JSON {name: [first unsealed seq, segments, points]}


class MetricSeriesRow(Base):
    """A segment of one metric's series: consecutive points as packed little-endian columns."""

    __tablename__ = "metric_series"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    metric_group: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # segment order
    count: Mapped[int] = mapped_column(Integer)
    vals: Mapped[bytes] = mapped_column(LargeBinary)  # float64 values
    steps: Mapped[bytes] = mapped_column(LargeBinary)  # int64 steps_completed
    times: Mapped[bytes] = mapped_column(LargeBinary)  # float64 timestamps


class CheckpointRow(Base):
    """A checkpoint record; the bytes live in storage, not here."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_trial_steps", "trial_id", "steps_completed"),)

    uuid: Mapped[str] = mapped_column(Text, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(32))
    steps_completed: Mapped[int] = mapped_column(BigInteger)
    resources: Mapped[str] = mapped_column(Text)  # JSON
    meta: Mapped[str] = mapped_column("metadata", Text)  # JSON
    storage: Mapped[str] = mapped_column(Text)  # JSON
    report_time: Mapped[float] = mapped_column(Double)
    training_metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    validation_metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON


class LogRow(Base):
    """One log line of a trial."""

    __tablename__ = "logs"
    __table_args__ = (
        Index("ix_logs_trial_id_id", "trial_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    timestamp: Mapped[float] = mapped_column(Double)
    message: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    stream: Mapped[str] = mapped_column(Text)
    level: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int] = mapped_column(Integer, default=0)


class ModelRow(Base):
    """A registered model; ``last_version`` numbers its versions (never reused)."""

    __tablename__ = "models"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[str] = mapped_column("metadata", Text, default="{}")  # JSON
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    creation_time: Mapped[float] = mapped_column(Double)
    last_updated_time: Mapped[float] = mapped_column(Double)
    last_version: Mapped[int] = mapped_column(Integer, default=0)


class ModelVersionRow(Base):
    """A version of a model: one registered checkpoint."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text, default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[str] = mapped_column("metadata", Text, default="{}")  # JSON
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    checkpoint_uuid: Mapped[str] = mapped_column(ForeignKey("checkpoints.uuid"), index=True)
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    creation_time: Mapped[float] = mapped_column(Double)


class PendingJobRow(Base):
    """Durable side work (file removals, deletions, checkpoint GC) recorded before it starts.

    A row is written before anything is removed and deleted when the work is done; a master
    that stops in between finishes the work on its next start.
    """

    __tablename__ = "pending_jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text, unique=True)  # one pending job per key
    payload: Mapped[str] = mapped_column(Text)  # JSON
    create_time: Mapped[float] = mapped_column(Double)


class UserRow(Base):
    """A user who logs in (issue 10); ``password_hash`` is argon2."""

    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(Text, unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Double)


class UserSessionRow(Base):
    """A login session; the token itself is never stored, only its SHA-256."""

    __tablename__ = "user_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double, index=True)


class ResourceOwnerRow(Base):
    """Who created a workspace, project, experiment or model (``kind``, id) -> user."""

    __tablename__ = "resource_owners"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    resource_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)


class MasterSettingRow(Base):
    """A master-wide value kept across restarts (the trial-token signing key)."""

    __tablename__ = "master_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
