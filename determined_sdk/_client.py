"""The :class:`Determined` client: the SDK's entry point, one session to one master."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from determined_sdk import _auth, _default, errors
from determined_sdk._checkpoint import Checkpoint
from determined_sdk._enums import ExperimentSortBy, ExperimentState, ModelSortBy, OrderBy
from determined_sdk._experiment import Experiment
from determined_sdk._model import Model
from determined_sdk._resource import check_id, deprecated, dumps, str_list
from determined_sdk._session import RetryPolicy, Session
from determined_sdk._trial import MetricSeries, Trial, TrialMetrics, iter_metrics, metric_series
from determined_sdk._workspace import Project, Workspace, iter_experiments
from determined_sdk.proto import (
    auth_pb2,
    checkpoint_pb2,
    experiment_pb2,
    master_pb2,
    model_pb2,
    workspace_pb2,
)

ConfigLike = Mapping[str, Any] | str | os.PathLike[str]


@dataclass(frozen=True)
class User:
    """A user of the master.

    Attributes:
        id: User id.
        username: Login name.
        admin: Whether the user is an admin.
        active: False once deactivated (cannot log in).
    """

    id: int
    username: str
    admin: bool
    active: bool

    @classmethod
    def _from_proto(cls, m: Any) -> User:
        return cls(m.id, m.username, m.admin, m.active)


@dataclass(frozen=True)
class MasterInfo:
    """What the master says about itself.

    Attributes:
        version: Master version.
        cluster_id: Unique id of this master's data.
        total_slots: Slots it schedules on.
        free_slots: Slots free now.
        database: ``sqlite`` or ``postgresql``.
    """

    version: str
    cluster_id: str
    total_slots: int
    free_slots: int
    database: str


def _config_text(config: ConfigLike) -> str:
    if isinstance(config, Mapping):
        return dumps(dict(config), "config")
    if isinstance(config, (str, os.PathLike)):
        path = pathlib.Path(config)
        try:
            return path.read_text()
        except OSError as e:
            raise errors.InvalidArgumentError(
                f"config: cannot read config file {str(path)!r}: {e.strerror or e}"
            ) from None
    raise errors.InvalidArgumentError(
        f"config: must be a dict or a path to a YAML/JSON file, got {type(config).__name__}"
    )


def _pack(
    model_dir: str | os.PathLike[str] | None,
    includes: Iterable[str | os.PathLike[str]] | None,
) -> bytes:
    """The model definition archive: ``model_dir`` plus ``includes`` at its top level."""
    from determined_sdk.model_dir import pack_model_dir

    extra = [pathlib.Path(x) for x in includes or ()]
    if model_dir is None and not extra:
        return b""
    if model_dir is not None and not pathlib.Path(model_dir).is_dir():
        raise errors.InvalidArgumentError(f"model_dir: {str(model_dir)!r} is not a directory")
    for item in extra:
        if not item.exists():
            raise errors.InvalidArgumentError(f"includes: {str(item)!r} does not exist")
    if not extra:
        assert model_dir is not None
        return pack_model_dir(model_dir)
    with tempfile.TemporaryDirectory(prefix="detsdk-model-") as tmp:
        root = pathlib.Path(tmp) / "model"
        if model_dir is not None:
            shutil.copytree(model_dir, root, symlinks=True)
        else:
            root.mkdir()
        for item in extra:
            if item.is_dir():
                shutil.copytree(item, root / item.name, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(item, root / item.name)
        return pack_model_dir(root)


class Determined:
    """A connection to a master, and the calls that start from it.

    Resources it returns (:class:`Experiment`, :class:`Trial`, ...) share its session and are
    hydrated from the master's answer; see their docs for which attributes are cached.

    Args:
        master: ``host:port`` of the master (default: ``$DET_MASTER``, else
            ``localhost:8080``); ``https://`` or ``grpcs://`` (or ``$DET_MASTER_CERT_FILE``)
            means TLS, ``http://`` and ``grpc://`` plain.
        user: User to log in as (None: ``$DET_USER``/``$DET_PASS``, else the cached token of
            this master, else ``admin`` with the empty password; see ``docs/security.md``).
        password: That user's password.
        retry: Retry policy of reads (default: 5 attempts, exponential backoff).
        timeout: Default deadline of one call, in seconds.
        interceptors: gRPC client interceptors to wrap the channel with (advanced).

    Raises:
        UnauthenticatedError: Bad user or password.

    Example::

        with Determined("127.0.0.1:8080") as d:
            exp = d.create_experiment({"name": "x", "entrypoint": "python train.py"}, "model")
            print(exp.wait())
    """

    def __init__(
        self,
        master: str | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = 60.0,
        interceptors: Sequence[Any] = (),
    ) -> None:
        self._session = Session(master, retry=retry, timeout=timeout, interceptors=interceptors)
        try:
            self._authenticate(user, password)
        except BaseException:
            self._session.close()
            raise

    def _authenticate(self, user: str | None, password: str | None) -> None:
        """Pick the token (see :mod:`determined_sdk._auth` for the order)."""
        creds = (
            _auth.Credentials(user, password or "") if user is not None else None
        ) or _auth.env_credentials()
        url = self._session.address.url
        if creds is not None:
            token = self._session.log_in(creds.username, creds.password)
            _auth.cache_token(url, creds.username, token)
            return
        cached = _auth.cached_token(url)
        if cached is not None:
            self._session.set_token(cached[1])
        # else: the first call is answered UNAUTHENTICATED and the session logs in as
        # admin with the empty password (a loopback quick start), or says how to log in.

    # -- users ------------------------------------------------------------------------------
    def login(self, user: str, password: str) -> None:
        """Log this client in as ``user`` (and cache the token for this master).

        Raises:
            UnauthenticatedError: Wrong user or password, or a deactivated user.
        """
        token = self._session.log_in(user, password)
        _auth.cache_token(self._session.address.url, user, token)

    def logout(self) -> None:
        """End this client's session on the master and forget the cached token."""
        try:
            self._session.logout(auth_pb2.LogoutRequest())
        finally:
            _auth.drop_token(self._session.address.url)
            self._session.set_token(None)

    def whoami(self) -> User:
        """The logged-in user.

        Raises:
            UnauthenticatedError: Not logged in.
        """
        r = self._session.get_me(auth_pb2.GetMeRequest())
        return User._from_proto(r.user)

    def create_user(self, username: str, password: str, *, admin: bool = False) -> User:
        """Create a user (admins only).

        Raises:
            PermissionDeniedError: The caller is not an admin.
            AlreadyExistsError: The name is taken.
            InvalidArgumentError: A bad username (the message says why).
        """
        r = self._session.create_user(
            auth_pb2.CreateUserRequest(username=username, password=password, admin=admin)
        )
        return User._from_proto(r.user)

    def list_users(self) -> list[User]:
        """Every user."""
        return [
            User._from_proto(u) for u in self._session.list_users(auth_pb2.ListUsersRequest()).users
        ]

    def change_password(
        self, new_password: str, *, old_password: str = "", username: str | None = None
    ) -> None:
        """Change your password (give the old one), or, as an admin, anyone's.

        Raises:
            PermissionDeniedError: Wrong old password, or someone else's password as a non-admin.
        """
        self._session.change_password(
            auth_pb2.ChangePasswordRequest(
                username=username or "", old_password=old_password, new_password=new_password
            )
        )
        if username is None and self._session._credentials is not None:
            self._session._credentials = _auth.Credentials(
                self._session._credentials.username, new_password
            )

    def set_user_active(self, username: str, active: bool) -> User:
        """Deactivate (ending their sessions) or reactivate a user; admins only."""
        r = self._session.set_user_active(
            auth_pb2.SetUserActiveRequest(username=username, active=active)
        )
        return User._from_proto(r.user)

    @property
    def session(self) -> Session:
        """The session (pass it, or this client, to ``Trial(id, session)`` and friends)."""
        return self._session

    @property
    def master(self) -> str:
        """``host:port`` of the master."""
        return self._session.master

    def close(self) -> None:
        """Close the connection; objects made from this client stop working."""
        self._session.close()

    def __enter__(self) -> Determined:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Determined(master={self.master!r})"

    # -- master -----------------------------------------------------------------------------
    def get_master_info(self) -> MasterInfo:
        """Version, slots and database of the master.

        Raises:
            MasterUnavailableError: The master cannot be reached.
        """
        r = self._session.get_master_info(master_pb2.GetMasterInfoRequest())
        return MasterInfo(r.version, r.cluster_id, r.total_slots, r.free_slots, r.database)

    # -- experiments ------------------------------------------------------------------------
    def create_experiment(
        self,
        config: ConfigLike,
        model_dir: str | os.PathLike[str] | None = None,
        includes: Iterable[str | os.PathLike[str]] | None = None,
        *,
        activate: bool = True,
        project_id: int | None = None,
        template: str | None = None,
        parent_id: int | None = None,
    ) -> Experiment:
        """Submit an experiment (Determined's arguments).

        Args:
            config: The config as a dict, or a path to a YAML/JSON file.
            model_dir: Directory holding the model code (packed and sent to the master), or
                None when the entrypoint needs no code of its own.
            includes: More files or directories to send, placed at the top of the model
                directory under their own names (as Determined does).
            activate: Start scheduling trials at once (else it waits, PAUSED, for
                :meth:`Experiment.activate`).
            project_id: Project to create it in (None: the default project).
            template: Determined's config template name; templates are not supported here,
                so only None is accepted.
            parent_id: Determined's fork parent; not supported here, so only None is accepted.

        Returns:
            The new experiment (hydrated).

        Raises:
            InvalidArgumentError: The config is invalid (the message names the field), a
                missing include, or a template or parent was given.
            ResourceExhaustedError: The model directory is too large.
            NotFoundError: No such project.
        """
        if template is not None:
            raise errors.InvalidArgumentError(
                f"template: config templates are not supported by this master, got {template!r}"
            )
        if parent_id is not None:
            raise errors.InvalidArgumentError(
                f"parent_id: forking experiments is not supported, got {parent_id!r}"
            )
        text = _config_text(config)
        model_def = _pack(model_dir, includes)
        req = experiment_pb2.CreateExperimentRequest(
            config=text,
            model_definition=model_def,
            activate=activate,
            project_id=0 if project_id is None else check_id(project_id, "project_id"),
        )
        resp = self._session.create_experiment(req)
        for warning in resp.warnings:
            warnings.warn(warning, UserWarning, stacklevel=2)
        return Experiment._from_proto(resp.experiment, self._session)

    def get_experiment(self, experiment_id: int) -> Experiment:
        """An experiment by id.

        Returns:
            The experiment (hydrated).

        Raises:
            NotFoundError: No such experiment.
        """
        exp = Experiment(experiment_id, self._session)
        exp.reload()
        return exp

    def iter_experiments(
        self,
        *,
        project_id: int | None = None,
        workspace_id: int | None = None,
        states: Iterable[ExperimentState | str] | None = None,
        name: str | None = None,
        labels: Iterable[str] | None = None,
        include_archived: bool = False,
        archived_only: bool = False,
        sort_by: str | ExperimentSortBy = "id",
        order_by: OrderBy | None = None,
        limit: int | None = None,
    ) -> Iterator[Experiment]:
        """Like :meth:`list_experiments`, but fetches pages lazily as you iterate."""
        return iter_experiments(
            self._session,
            project_id=project_id,
            workspace_id=workspace_id,
            states=states,
            name=name,
            labels=labels,
            include_archived=include_archived,
            archived_only=archived_only,
            sort_by=sort_by,
            order_by=order_by,
            limit=limit,
        )

    def list_experiments(
        self,
        *,
        project_id: int | None = None,
        workspace_id: int | None = None,
        states: Iterable[ExperimentState | str] | None = None,
        name: str | None = None,
        labels: Iterable[str] | None = None,
        include_archived: bool = False,
        archived_only: bool = False,
        sort_by: str | ExperimentSortBy = "id",
        order_by: OrderBy | None = None,
        limit: int | None = None,
    ) -> list[Experiment]:
        """Experiments matching every filter given.

        Args:
            project_id: Only this project's.
            workspace_id: Only this workspace's.
            states: Only these states.
            name: Only names containing this substring.
            labels: Only experiments carrying all these labels.
            include_archived: Also archived ones.
            archived_only: Only archived ones.
            sort_by: An :class:`ExperimentSortBy`, or its value: ``id``, ``name``,
                ``start_time``, ``end_time``, ``state`` or ``progress``.
            order_by: Direction (None: ascending).
            limit: At most this many.

        Returns:
            A list of hydrated :class:`Experiment` objects.

        Raises:
            InvalidArgumentError: Bad filter values.
        """
        return list(
            self.iter_experiments(
                project_id=project_id,
                workspace_id=workspace_id,
                states=states,
                name=name,
                labels=labels,
                include_archived=include_archived,
                archived_only=archived_only,
                sort_by=sort_by,
                order_by=order_by,
                limit=limit,
            )
        )

    # -- trials, checkpoints, metrics ---------------------------------------------------------
    def get_trial(self, trial_id: int) -> Trial:
        """A trial by id.

        Returns:
            The trial (hydrated).

        Raises:
            NotFoundError: No such trial.
        """
        trial = Trial(trial_id, self._session)
        trial.reload()
        return trial

    def get_checkpoint(self, uuid: str) -> Checkpoint:
        """A checkpoint by UUID, or by a unique prefix of it (at least 4 characters).

        Returns:
            The checkpoint (hydrated; ``uuid`` is the whole uuid).

        Raises:
            NotFoundError: No such checkpoint.
            InvalidArgumentError: The prefix starts several checkpoints' uuids.
        """
        ckpt = Checkpoint(uuid, self._session)
        msg = ckpt._fetch()
        return Checkpoint._from_proto(msg, self._session)

    def iter_trials_metrics(
        self,
        trial_ids: Sequence[int] | int,
        group: str | None = None,
        *,
        names: Iterable[str] | None = None,
        min_steps: int | None = None,
        max_steps: int | None = None,
        follow: bool = False,
    ) -> Iterator[TrialMetrics]:
        """Metric reports of several trials, streamed lazily (by trial, then steps).

        Args:
            trial_ids: The trials (an int is one trial).
            group: ``"training"``, ``"validation"``, a user group, or None for all.
            names: Only these metrics (reports with none of them are left out).
            min_steps: Only reports with ``steps_completed >= min_steps``.
            max_steps: Only reports with ``steps_completed <= max_steps``.
            follow: After the stored reports, keep yielding new ones (in the order they are
                stored) until every trial has ended.

        Returns:
            An iterator of :class:`TrialMetrics`.

        Raises:
            InvalidArgumentError: No trial ids or a bad one, a bad name or steps bound.
            NotFoundError: A trial does not exist (raised on first ``next``).
        """
        ids = [trial_ids] if isinstance(trial_ids, int) else list(trial_ids)
        return iter_metrics(
            self._session,
            ids,
            group,
            names=names,
            min_steps=min_steps,
            max_steps=max_steps,
            follow=follow,
        )

    def metric_series(
        self,
        trial_ids: Sequence[int] | int,
        names: Iterable[str] | str,
        group: str = "training",
        *,
        max_points: int | None = None,
    ) -> dict[int, dict[str, MetricSeries]]:
        """Per trial and metric name, its points as columns: a learning-curve chart of many
        trials in one call (see :meth:`Trial.metric_series`).

        Served from the master's packed per-metric series, not a row per point. With every
        point each series is exactly what ``iter_trials_metrics(trial_ids, group,
        names=[name])`` yields for that trial and name (not superseded, in steps order).

        Args:
            trial_ids: The trials (an int is one trial).
            names: A metric name or several.
            group: ``"training"``, ``"validation"`` or a group one of the trials reported.
            max_points: None for every point; else at most this many per series (4 to
                100,000), downsampled by min/max per bucket as the web UI's charts are.

        Returns:
            ``{trial_id: {name: MetricSeries}}``, trials and names in the order given; a
            trial without points of a name has an empty series for it.

        Raises:
            InvalidArgumentError: No trial ids or a bad one, no names or a bad one, a bad
                ``max_points``, a group none of the trials reported.
            NotFoundError: A trial does not exist (the message names it).
        """
        ids = [trial_ids] if isinstance(trial_ids, int) else list(trial_ids)
        return metric_series(self._session, ids, names, group, max_points)

    def stream_trials_metrics(
        self, trial_ids: Sequence[int] | int, group: str | None = None
    ) -> Iterator[TrialMetrics]:
        """Deprecated (as in Determined): use :meth:`iter_trials_metrics`."""
        deprecated("Determined.stream_trials_metrics()", "Determined.iter_trials_metrics()")
        return self.iter_trials_metrics(trial_ids, group)

    def delete_checkpoints(self, uuids: Iterable[str]) -> None:
        """Delete several checkpoints' files and mark them DELETED.

        Raises:
            NotFoundError: A checkpoint does not exist.
        """
        req = checkpoint_pb2.DeleteCheckpointsRequest(uuids=str_list(uuids, "uuids"))
        self._session.delete_checkpoints(req)

    # -- workspaces and projects ----------------------------------------------------------
    def create_workspace(self, name: str) -> Workspace:
        """Create a workspace.

        Raises:
            AlreadyExistsError: A workspace has that name.
            InvalidArgumentError: Empty name.
        """
        if not isinstance(name, str) or not name.strip():
            raise errors.InvalidArgumentError(f"name: must be a non-empty string, got {name!r}")
        resp = self._session.create_workspace(workspace_pb2.CreateWorkspaceRequest(name=name))
        return Workspace._from_proto(resp.workspace, self._session)

    def get_workspace(self, workspace: str | int) -> Workspace:
        """A workspace by name (or id).

        Returns:
            The workspace (hydrated).

        Raises:
            NotFoundError: No such workspace.
        """
        if isinstance(workspace, int) and not isinstance(workspace, bool):
            req = workspace_pb2.GetWorkspaceRequest(workspace_id=check_id(workspace, "workspace"))
        elif isinstance(workspace, str) and workspace:
            req = workspace_pb2.GetWorkspaceRequest(name=workspace)
        else:
            raise errors.InvalidArgumentError(
                f"workspace: must be a name or an id, got {workspace!r}"
            )
        return Workspace._from_proto(self._session.get_workspace(req).workspace, self._session)

    def delete_workspace(self, workspace: str | int) -> None:
        """Delete a workspace by name (or id), as Determined's ``delete_workspace``.

        Raises:
            FailedPreconditionError: It holds experiments or is the default workspace.
            NotFoundError: No such workspace.
        """
        self.get_workspace(workspace).delete()

    def list_workspaces(self, name: str | None = None) -> list[Workspace]:
        """Workspaces, optionally only the one with that name.

        Returns:
            A list of hydrated :class:`Workspace` objects.
        """
        resp = self._session.list_workspaces(workspace_pb2.ListWorkspacesRequest(name=name or ""))
        return [Workspace._from_proto(w, self._session) for w in resp.workspaces]

    def get_project(self, project_id: int) -> Project:
        """A project by id.

        Raises:
            NotFoundError: No such project.
        """
        p = Project(project_id, self._session)
        p.reload()
        return p

    # -- models -----------------------------------------------------------------------------
    def create_model(
        self,
        name: str,
        description: str = "",
        metadata: dict[str, Any] | None = None,
        labels: Iterable[str] | None = None,
        workspace_name: str | None = None,
    ) -> Model:
        """Register a model (versions are added with :meth:`Model.register_version`).

        Args:
            name: Unique model name.
            description: Free text.
            metadata: JSON-serializable dict.
            labels: Labels.
            workspace_name: Workspace to create it in (None: the default one).

        Returns:
            The new model (hydrated).

        Raises:
            AlreadyExistsError: A model has that name.
            NotFoundError: No such workspace.
        """
        if not isinstance(name, str) or not name.strip():
            raise errors.InvalidArgumentError(f"name: must be a non-empty string, got {name!r}")
        ws_id = 0 if workspace_name is None else self.get_workspace(workspace_name).id
        req = model_pb2.CreateModelRequest(
            name=name,
            description=description,
            metadata_json=dumps(metadata or {}, "metadata"),
            labels=str_list(labels, "labels"),
            workspace_id=ws_id,
        )
        return Model._from_proto(self._session.create_model(req).model, self._session)

    def get_model(self, identifier: str | int) -> Model:
        """A model by name, or by id (an int), as Determined's ``get_model`` takes either.

        Returns:
            The model (hydrated).

        Raises:
            NotFoundError: No such model.
            InvalidArgumentError: Neither a name nor a positive id.
        """
        if isinstance(identifier, bool) or not isinstance(identifier, (int, str)):
            raise errors.InvalidArgumentError(
                f"identifier: must be a model name or id, got {identifier!r}"
            )
        if isinstance(identifier, int):
            return self.get_model_by_id(identifier)
        m = Model(identifier, self._session)
        m.reload()
        return m

    def get_model_by_id(self, model_id: int) -> Model:
        """A model by its id.

        Raises:
            NotFoundError: No model has that id.
            InvalidArgumentError: Not a positive integer.
        """
        check_id(model_id, "model_id")
        req = model_pb2.ListModelsRequest(include_archived=True)
        for m in self._session.list_models(req).models:
            if m.id == model_id:
                return Model._from_proto(m, self._session)
        raise errors.NotFoundError(f"model {model_id} not found")

    def get_model_labels(self) -> list[str]:
        """Every label used by a model, most used first (then by name)."""
        req = model_pb2.ListModelsRequest(include_archived=True)
        counts: dict[str, int] = {}
        for m in self._session.list_models(req).models:
            for label in m.labels:
                counts[label] = counts.get(label, 0) + 1
        return sorted(counts, key=lambda x: (-counts[x], x))

    def list_models(
        self,
        name: str | None = None,
        labels: Iterable[str] | None = None,
        include_archived: bool = False,
        workspace_name: str | None = None,
    ) -> list[Model]:
        """Registered models.

        Args:
            name: Only names containing this substring.
            labels: Only models carrying all these labels.
            include_archived: Also archived ones.
            workspace_name: Only this workspace's.

        Returns:
            A list of hydrated :class:`Model` objects.
        """
        ws_id = 0 if workspace_name is None else self.get_workspace(workspace_name).id
        req = model_pb2.ListModelsRequest(
            name=name or "",
            labels=str_list(labels, "labels"),
            include_archived=include_archived,
            workspace_id=ws_id,
        )
        return [Model._from_proto(m, self._session) for m in self._session.list_models(req).models]

    # -- deprecated -------------------------------------------------------------------------
    def get_models(
        self,
        sort_by: ModelSortBy = ModelSortBy.NAME,
        order_by: OrderBy = OrderBy.ASC,
        name: str | None = None,
        description: str | None = None,
        model_id: int | None = None,
        workspace_names: Iterable[str] | None = None,
        workspace_ids: Iterable[int] | None = None,
        labels: Iterable[str] | None = None,
    ) -> list[Model]:
        """Deprecated (as in Determined): use :meth:`list_models`. Determined's filters and
        sort keys; ``name`` is an exact name here as there.

        Raises:
            InvalidArgumentError: A bad sort key or direction.
        """
        deprecated("Determined.get_models()", "Determined.list_models()")
        if not isinstance(sort_by, ModelSortBy):
            raise errors.InvalidArgumentError(f"sort_by: must be a ModelSortBy, got {sort_by!r}")
        if not isinstance(order_by, OrderBy):
            raise errors.InvalidArgumentError(f"order_by: must be an OrderBy, got {order_by!r}")
        models = self.list_models(name=name, labels=labels, include_archived=True)
        ws_ids = set(workspace_ids or ())
        ws_ids |= {self.get_workspace(w).id for w in workspace_names or ()}
        models = [
            m
            for m in models
            if (name is None or m.name == name)
            and (description is None or description in m.description)
            and (model_id is None or m.id == model_id)
            and (not ws_ids or m.workspace_id in ws_ids)
        ]
        field = sort_by.value
        models.sort(key=lambda m: (getattr(m, field), m.name), reverse=order_by.value == "DESC")
        return models

    def get_workspaces(self) -> list[Workspace]:
        """Deprecated: use :meth:`list_workspaces`."""
        deprecated("Determined.get_workspaces()", "Determined.list_workspaces()")
        return self.list_workspaces()

    def get_experiments(self, **kwargs: Any) -> list[Experiment]:
        """Deprecated: use :meth:`list_experiments`."""
        deprecated("Determined.get_experiments()", "Determined.list_experiments()")
        return self.list_experiments(**kwargs)


_default.register_factory(Determined)
