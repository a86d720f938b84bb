"""The store contract: everything the master keeps, behind one interface.

Contract (every implementation, SQLite and PostgreSQL alike, passes ``tests/master_server/store``):

* **Thread safety.** Every method may be called from any thread at any time; each call is one
  transaction and either fully happens or not at all.
* **Transactions.** Inside ``with store.transaction():`` every call the same thread makes joins
  one transaction (reads see its writes; a call that fails undoes only its own part), committed
  when the block ends and rolled back when it raises: several calls either all happen or none.
  Other threads see nothing of it before the commit. Nesting joins the outer block. The write
  transaction begins at the block's first write: reads before it are ordinary reads and hold
  no write lock, so a block that reads and decides before it writes does not stop other writers.
* **Errors.** A missing id raises :class:`~determined_sdk.errors.NotFoundError` naming the kind
  and the id (``"experiment 7 not found"``); a duplicate unique name raises
  :class:`~determined_sdk.errors.AlreadyExistsError`; bad values raise
  :class:`~determined_sdk.errors.InvalidArgumentError`. Methods never signal failure by
  returning ``None`` (only ``get_*`` lookups named ``find_*`` may return ``None``).
* **Ids.** Workspace, project, experiment, trial, model ids are integers counting up from 1.
  The default workspace and project, both named ``"Uncategorized"``, exist after
  :meth:`Store.migrate` and have id 1.
* **Metrics.** :meth:`add_metrics` writes one batch in one transaction (:meth:`add_metrics_many`
  many batches in one) and updates the trial's
  ``summary_metrics`` and ``steps_completed`` in that same transaction. The summary has one
  entry per group: ``"training"`` is kept under ``"avg_metrics"``, ``"validation"`` under
  ``"validation_metrics"``, any other group under its own name; each metric name maps to
  ``{"min", "max", "last", "count", "mean"}`` (NaN values count in ``count`` and ``last`` but
  not in min/max/mean). A batch id already stored for the trial makes the call a no-op that
  returns False. NaN and +/-inf are stored and read back as such. :meth:`read_metrics` reads
  points back as columns in (trial, steps, insertion) order, each page in its own short
  transaction, through indexes on (trial, group, steps) and (trial, steps): reading one
  group or a steps range never scans the trial's other points.
* **Runs.** Each metric report records the trial run that sent it. When run ``r`` restarts a
  trial from its checkpoint at step ``S``, :meth:`supersede_metrics` marks the reports of runs
  before ``r`` at steps after ``S``; readers see one series unless they ask for superseded ones,
  and the trial's ``summary_metrics`` is rebuilt from the reports left (same transaction).
* **Checkpoints.** :meth:`add_checkpoint` fills ``training_metrics`` / ``validation_metrics``
  from the last (not superseded) report of each group at or before the checkpoint's
  ``steps_completed``; :meth:`add_metrics` keeps them so when the report comes after the
  checkpoint (a validation reported right after its checkpoint belongs to it), and
  sets the trial's ``latest_checkpoint_uuid`` when the checkpoint is COMPLETED and its steps
  are the trial's highest.
* **Searcher state.** A snapshot plus an append-only event log: :meth:`append_searcher_event`
  writes one small row (cost independent of the search's size); :meth:`save_searcher_state`
  replaces the snapshot and deletes the events it covers in the same transaction, so
  :meth:`load_searcher_log` always returns a snapshot and exactly the events after it.
* **Deletion.** :meth:`delete_experiment` removes the experiment and everything under it
  (trials, metrics, checkpoint records, logs, searcher state); files on disk are the caller's.
* **Pending jobs.** Side work (file removals, deletions, checkpoint GC) is recorded with
  :meth:`add_job` before it starts and removed with :meth:`finish_job` when done; at most one
  pending job exists per ``key`` (adding it again returns the pending one).
  :meth:`begin_checkpoint_deletion` and :meth:`begin_experiment_deletion` check every
  precondition, mark the records (checkpoints DELETED, the experiment DELETING) and record the
  job that removes the files, all in one transaction: a checkpoint is never COMPLETED with its
  files gone, and nothing is marked when a precondition fails.
* **Immutability.** An experiment's config and model definition never change after creation.
* **Users and sessions** (issue 10). Usernames are unique (:class:`AlreadyExistsError`); a
  session is found by the SHA-256 of its token, never by the token; deleting a user is not
  offered (deactivate instead), so owner records always name an existing user. Owners are kept
  per (kind, id) with kind one of ``workspace``, ``project``, ``experiment``, ``model``;
  :meth:`set_owner` overwrites. :meth:`ensure_setting` stores a value only if the key has none
  yet and returns the value that is stored (the first writer wins across processes).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from determined_sdk.errors import DeterminedError
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
    User,
    UserSession,
    Workspace,
)

_UNSET: Any = object()


class Store(abc.ABC):
    """Abstract store; see the module docstring for the contract."""

    UNSET: Any = _UNSET  # sentinel for "leave this field as it is" in update_* methods

    # -- lifecycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> None:
        """Apply every Alembic migration and create the default workspace/project."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One transaction for every store call this thread makes inside the block.

        Committed when the block ends, rolled back when it raises; a block inside another
        joins it. The write transaction begins at the block's first write; from then on, on
        SQLite, the block holds the database's one writer slot: decide first, then write.
        """

    @property
    @abc.abstractmethod
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""

    # -- workspaces and projects ----------------------------------------------------------
    @abc.abstractmethod
    def create_workspace(self, name: str) -> Workspace: ...
    @abc.abstractmethod
    def get_workspace(self, workspace_id: int) -> Workspace: ...
    @abc.abstractmethod
    def get_workspace_by_name(self, name: str) -> Workspace: ...
    @abc.abstractmethod
    def list_workspaces(self, name: str | None = None) -> list[Workspace]: ...
    @abc.abstractmethod
    def delete_workspace(self, workspace_id: int) -> None:
        """Delete an empty workspace; FailedPreconditionError if it holds projects with
        experiments, or if it is the default workspace."""

    @abc.abstractmethod
    def create_project(self, workspace_id: int, name: str, description: str = "") -> Project: ...
    @abc.abstractmethod
    def get_project(self, project_id: int) -> Project: ...
    @abc.abstractmethod
    def get_project_by_name(self, workspace_id: int, name: str) -> Project: ...
    @abc.abstractmethod
    def list_projects(self, workspace_id: int | None = None) -> list[Project]: ...
    @abc.abstractmethod
    def update_project(
        self,
        project_id: int,
        *,
        name: str = _UNSET,
        description: str = _UNSET,
        archived: bool = _UNSET,
        notes: Sequence[tuple[str, str]] = _UNSET,
    ) -> Project:
        """Set the given fields (others unchanged) and return the new value.

        ``notes`` replaces the whole list of (name, contents) pairs. Raises NotFoundError for
        an unknown project, AlreadyExistsError when the new name is taken in its workspace,
        InvalidArgumentError for an empty name.
        """

    @abc.abstractmethod
    def delete_project(self, project_id: int) -> None:
        """FailedPreconditionError if it holds experiments or is the default project."""

    # -- experiments --------------------------------------------------------------------------
    @abc.abstractmethod
    def create_experiment(self, new: NewExperiment) -> Experiment:
        """Create an experiment (and its searcher snapshot, if ``new`` has one) atomically."""

    @abc.abstractmethod
    def get_experiment(self, experiment_id: int) -> Experiment: ...
    @abc.abstractmethod
    def get_experiment_state(self, experiment_id: int) -> ExperimentState:
        """Only the experiment's state: what the engine checks on every event, one column
        read instead of the whole row with its config (NotFoundError if there is none)."""

    @abc.abstractmethod
    def get_model_definition(self, experiment_id: int) -> bytes: ...
    @abc.abstractmethod
    def list_experiments(self, flt: ExperimentFilter) -> tuple[list[Experiment], int]:
        """Matching experiments (one page, as ``flt`` asks) and the total count of matches."""

    @abc.abstractmethod
    def list_experiment_summaries(
        self, flt: ExperimentFilter
    ) -> tuple[list[ExperimentSummaryRow], int]:
        """:meth:`list_experiments` without configs (``flt.full`` is ignored), each
        experiment an undecoded :data:`~master_server.domain.ExperimentSummaryRow`: the same
        experiments, order and count, for the list replies of the API."""

    @abc.abstractmethod
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

    @abc.abstractmethod
    def delete_experiment(self, experiment_id: int) -> None: ...

    @abc.abstractmethod
    def save_searcher_state(
        self, experiment_id: int, state: JSONDict, *, events_through: int | None = None
    ) -> int:
        """Replace the experiment's persisted searcher snapshot.

        The snapshot covers the searcher events appended so far (or those with an id up to
        ``events_through`` when given): they are deleted in the same transaction.

        Returns:
            The size of the stored snapshot in bytes (of its JSON text).
        """

    @abc.abstractmethod
    def load_searcher_state(self, experiment_id: int) -> JSONDict | None:
        """The last snapshot saved, or None if none was."""

    @abc.abstractmethod
    def set_experiment_progress(self, experiment_id: int, progress: float) -> None:
        """Set only the experiment's progress (the searcher's, saved on its events): one
        write, nothing read back (NotFoundError if there is no such experiment)."""

    @abc.abstractmethod
    def append_searcher_event(self, experiment_id: int, event: JSONDict) -> int:
        """Append one event to the experiment's searcher log (after its snapshot).

        Returns:
            The event's id; ids increase in the order events are appended.
        """

    @abc.abstractmethod
    def load_searcher_log(self, experiment_id: int) -> SearcherLog:
        """The last snapshot and the events appended after it, oldest first."""

    # -- trials -------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_trial(
        self,
        experiment_id: int,
        *,
        request_id: str,
        hparams: JSONDict,
        state: TrialState = TrialState.QUEUED,
        warm_start_checkpoint_uuid: str | None = None,
    ) -> Trial: ...
    @abc.abstractmethod
    def get_trial(self, trial_id: int) -> Trial: ...
    @abc.abstractmethod
    def list_trials(
        self,
        experiment_id: int | None = None,
        *,
        states: Sequence[TrialState] = (),
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[Trial], int]:
        """Trials ordered by id (all experiments when ``experiment_id`` is None) and the total."""

    @abc.abstractmethod
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
    ) -> Trial: ...

    # -- metrics ------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_metrics(
        self, trial_id: int, batch_id: str, reports: Sequence[MetricReport], run_id: int = 0
    ) -> bool:
        """Store one batch (reported by run ``run_id``, 0 = unknown) and update the summary;
        False if ``batch_id`` was already stored."""

    @abc.abstractmethod
    def add_metrics_many(
        self, batches: Sequence[tuple[int, str, Sequence[MetricReport], int]]
    ) -> list[bool | DeterminedError]:
        """Store many ``(trial_id, batch_id, reports, run_id)`` batches in one transaction.

        Each batch is stored as :meth:`add_metrics` would; the result per batch is True, False (a
        batch id already stored, earlier or in this call) or the error that batch alone raises.
        A bad batch never stops the others."""

    @abc.abstractmethod
    def iter_metrics(
        self,
        trial_ids: Sequence[int],
        group: str | None = None,
        page_size: int = 10_000,
        *,
        include_superseded: bool = False,
    ) -> Iterator[list[MetricPoint]]:
        """Pages of points ordered by (trial_id, steps_completed, insertion order); lazy.
        Superseded reports are left out unless ``include_superseded``."""

    @abc.abstractmethod
    def supersede_metrics(self, trial_id: int, run_id: int, after_steps: int) -> int:
        """Mark reports of runs before ``run_id`` at steps after ``after_steps`` superseded (a
        restart from the checkpoint at ``after_steps``) and rebuild the trial's summary without
        them; returns how many were marked."""

    @abc.abstractmethod
    def read_metrics(self, query: MetricQuery) -> Iterator[MetricColumns]:
        """Pages of at most ``query.page_size`` points as columns, in the order of
        :meth:`iter_metrics`, filtered by group, names (points with none of them are left
        out, the others keep only those), and an inclusive steps range; with ``after_ids``,
        only points stored after each trial's position, with ``until_id`` only those stored
        up to that id. Lazy; errors come on the first ``next``."""

    @abc.abstractmethod
    def metric_series(
        self, trial_ids: Sequence[int], group: str, names: Sequence[str] = ()
    ) -> dict[int, dict[str, SeriesColumns]]:
        """Per trial, per metric name of ``group`` (``names``; empty: every name, sorted), the
        points a :meth:`read_metrics` of that group and name gives (not superseded, same
        order, points without the name left out) as packed columns. Kept up to date in the
        transaction that stores or supersedes points, so a chart reads a few rows per series
        instead of a row per point; a name without points is absent."""

    @abc.abstractmethod
    def last_metric_id(self) -> int:
        """The storage id of the last metric point stored (0 if none): a follow starts there."""

    # -- checkpoints --------------------------------------------------------------------------
    @abc.abstractmethod
    def add_checkpoint(self, ckpt: Checkpoint) -> Checkpoint:
        """Record a checkpoint (metrics filled in as the contract says). Re-adding the same
        uuid for the same trial replaces resources/metadata/state (a retried report)."""

    @abc.abstractmethod
    def get_checkpoint(self, uuid: str) -> Checkpoint: ...
    @abc.abstractmethod
    def checkpoint_uuids_starting(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` checkpoint uuids that start with ``prefix``, in order."""

    @abc.abstractmethod
    def list_checkpoints(
        self,
        *,
        experiment_id: int | None = None,
        trial_id: int | None = None,
        states: Sequence[CheckpointState] = (),
    ) -> list[Checkpoint]:
        """Checkpoints of one experiment or trial, ordered by (trial_id, steps_completed);
        ``states`` empty means every state but DELETED."""

    @abc.abstractmethod
    def update_checkpoint(
        self,
        uuid: str,
        *,
        state: CheckpointState = _UNSET,
        metadata: JSONDict = _UNSET,
        resources: dict[str, int] = _UNSET,
    ) -> Checkpoint: ...

    # -- logs ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_logs(self, lines: Sequence[LogLine], batch_id: str = "") -> bool:
        """Append lines (one transaction); ids are assigned increasing in the given order.
        With a ``batch_id`` already stored for the first line's trial, nothing is stored and
        the call returns False (a retried batch)."""

    @abc.abstractmethod
    def query_logs(self, q: LogQuery) -> list[LogLine]:
        """Matching lines with id > ``q.after_id`` in id order, cut by head/tail."""

    # -- models -------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_model(
        self,
        name: str,
        *,
        description: str = "",
        metadata: JSONDict | None = None,
        labels: Sequence[str] = (),
        workspace_id: int = 1,
    ) -> Model: ...
    @abc.abstractmethod
    def get_model(self, name: str) -> Model: ...
    @abc.abstractmethod
    def list_models(
        self,
        *,
        name_contains: str | None = None,
        labels: Sequence[str] = (),
        include_archived: bool = False,
        workspace_id: int | None = None,
    ) -> list[Model]: ...
    @abc.abstractmethod
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
    ) -> Model: ...
    @abc.abstractmethod
    def delete_model(self, name: str) -> None: ...
    @abc.abstractmethod
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
        """Version numbers count up from 1 per model."""

    @abc.abstractmethod
    def list_model_versions(self, model_name: str) -> list[ModelVersion]: ...
    @abc.abstractmethod
    def get_model_version(self, model_name: str, version: int | None = None) -> ModelVersion:
        """``version`` None = the latest."""

    @abc.abstractmethod
    def update_model_version(
        self,
        model_name: str,
        version: int,
        *,
        name: str = _UNSET,
        comment: str = _UNSET,
        notes: str = _UNSET,
    ) -> ModelVersion:
        """Set the given fields of one version (others unchanged) and return the new value.

        Raises NotFoundError for an unknown model or version.
        """

    @abc.abstractmethod
    def delete_model_version(self, model_name: str, version: int) -> None: ...

    # -- pending jobs --------------------------------------------------------------------------
    @abc.abstractmethod
    def add_job(self, kind: str, key: str, payload: JSONDict) -> PendingJob:
        """Record side work before it starts; returns the pending job of ``key`` if one exists."""

    @abc.abstractmethod
    def list_jobs(self) -> list[PendingJob]:
        """Pending jobs, oldest first."""

    @abc.abstractmethod
    def finish_job(self, job_id: int) -> None:
        """The job's work is done: forget it (finishing a finished job is a no-op)."""

    @abc.abstractmethod
    def begin_checkpoint_deletion(
        self, uuids: Sequence[str], paths: Sequence[RemovalTarget]
    ) -> PendingJob:
        """Mark checkpoints DELETED and record a ``remove_files`` job for ``paths``, atomically.

        Raises:
            NotFoundError: One of the uuids does not exist (nothing is changed).
            FailedPreconditionError: One of them is registered as a model version; the message
                names the checkpoint, the model and the version (nothing is changed).
        """

    @abc.abstractmethod
    def begin_experiment_deletion(
        self, experiment_id: int, paths: Sequence[RemovalTarget]
    ) -> PendingJob:
        """Mark a finished experiment DELETING and record its ``delete_experiment`` job.

        Raises:
            NotFoundError: No such experiment.
            FailedPreconditionError: It has not finished (COMPLETED, CANCELED, ERROR or already
                DELETING), or one of its checkpoints is registered as a model version (the
                message names the model and the version). Nothing is changed.
        """

    # -- users, sessions, owners, settings (issue 10) ----------------------------------------
    @abc.abstractmethod
    def create_user(self, username: str, password_hash: str, *, admin: bool = False) -> User:
        """Create an active user; :class:`AlreadyExistsError` if the name is taken."""

    @abc.abstractmethod
    def get_user(self, user_id: int) -> User: ...

    @abc.abstractmethod
    def find_user_by_name(self, username: str) -> User | None:
        """The user with this name, or None."""

    @abc.abstractmethod
    def list_users(self) -> list[User]:
        """Every user, by id."""

    @abc.abstractmethod
    def update_user(
        self,
        user_id: int,
        *,
        password_hash: str = _UNSET,
        admin: bool = _UNSET,
        active: bool = _UNSET,
    ) -> User:
        """Change the given fields of a user."""

    @abc.abstractmethod
    def add_session(self, session: UserSession) -> None:
        """Store a login session."""

    @abc.abstractmethod
    def find_session(self, token_hash: str) -> UserSession | None:
        """The session with this token hash, or None (expired ones included)."""

    @abc.abstractmethod
    def delete_sessions(
        self,
        *,
        token_hash: str | None = None,
        user_id: int | None = None,
        expired_before: float | None = None,
    ) -> int:
        """Delete the session with ``token_hash``, every session of ``user_id``, and/or every
        session that expired before ``expired_before``; returns how many were deleted."""

    @abc.abstractmethod
    def set_owner(self, kind: str, resource_id: int, user_id: int) -> None:
        """Record that ``user_id`` owns (kind, resource_id)."""

    @abc.abstractmethod
    def find_owner(self, kind: str, resource_id: int) -> int | None:
        """The owner's user id, or None when nobody is recorded (made before users existed)."""

    @abc.abstractmethod
    def owner_names(self, kind: str, resource_ids: Sequence[int]) -> dict[int, str]:
        """Owner usernames of the given resources (ids without an owner are left out)."""

    @abc.abstractmethod
    def ensure_setting(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the stored value."""
