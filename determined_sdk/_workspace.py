"""The :class:`Workspace` and :class:`Project` resources, and experiment listing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from determined_sdk import errors
from determined_sdk._enums import ExperimentSortBy, ExperimentState, OrderBy
from determined_sdk._experiment import Experiment, SummaryPage
from determined_sdk._resource import Resource, SessionLike, check_id, str_list
from determined_sdk._session import Session
from determined_sdk.proto import common_pb2, experiment_pb2, workspace_pb2

#: Experiments asked for per ListExperiments call (the master sends summaries: no configs).
EXPERIMENTS_PAGE_SIZE = 10_000
_EXPERIMENT_SORT_KEYS = ("id", "name", "start_time", "end_time", "state", "progress")


def iter_experiments(
    session: Session,
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
    page_size: int = EXPERIMENTS_PAGE_SIZE,
) -> Iterator[Experiment]:
    """Experiments matching the filters, fetched lazily a page at a time (see
    ``Determined.list_experiments`` for the arguments)."""
    if isinstance(sort_by, ExperimentSortBy):
        sort_by = sort_by.value
    if sort_by not in _EXPERIMENT_SORT_KEYS:
        raise errors.InvalidArgumentError(
            f"sort_by: must be one of {', '.join(_EXPERIMENT_SORT_KEYS)}, got {sort_by!r}"
        )
    if order_by is not None and not isinstance(order_by, OrderBy):
        raise errors.InvalidArgumentError(f"order_by: must be an OrderBy, got {order_by!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise errors.InvalidArgumentError(f"limit: must be a non-negative integer, got {limit!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise errors.InvalidArgumentError(f"page_size: must be >= 1, got {page_size!r}")
    base = experiment_pb2.ListExperimentsRequest(
        project_id=0 if project_id is None else check_id(project_id, "project_id"),
        workspace_id=0 if workspace_id is None else check_id(workspace_id, "workspace_id"),
        states=[_experiment_state(s)._to_proto() for s in states or ()],
        name=name or "",
        labels=str_list(labels, "labels"),
        include_archived=include_archived or archived_only,
        archived_only=archived_only,
        sort_by=sort_by,
    )
    if order_by is not None:
        base.order_by = order_by._to_proto()
    return _pages(session, base, limit, page_size)


def _pages(
    session: Session,
    base: experiment_pb2.ListExperimentsRequest,
    limit: int | None,
    page_size: int,
) -> Iterator[Experiment]:
    offset = 0
    while limit is None or offset < limit:
        want = page_size if limit is None else min(page_size, limit - offset)
        req = experiment_pb2.ListExperimentsRequest()
        req.CopyFrom(base)
        req.pagination.CopyFrom(common_pb2.Pagination(offset=offset, limit=want))
        req.columnar = True  # summaries as columns: no message per row on either side
        resp = session.list_experiments(req)
        if resp.HasField("columns"):
            page = SummaryPage(resp.columns)
            got = page.size
            for i, experiment_id in enumerate(page.column("id")):
                yield Experiment._listed(page, i, experiment_id, session)
        else:  # a master that predates columns, or a page too big for them
            got = len(resp.experiments)
            for e in resp.experiments:
                yield Experiment._from_proto(e, session)
        offset += got
        if not got or offset >= resp.pagination.total:
            return


def _experiment_state(value: ExperimentState | str) -> ExperimentState:
    if isinstance(value, ExperimentState):
        return value
    try:
        return ExperimentState(str(value).upper())
    except ValueError:
        raise errors.InvalidArgumentError(f"states: unknown experiment state {value!r}") from None


class Project(Resource[workspace_pb2.Project]):
    """A project: a folder of experiments inside a workspace.

    ``Project(project_id, session)`` builds a blank object without a request. Cached
    attributes (refreshed by :meth:`reload`): ``name``, ``description``, ``workspace_id``,
    ``archived``, ``num_experiments``.

    Args:
        project_id: The project's id.
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
    """

    def __init__(self, project_id: int, session: SessionLike | None = None) -> None:
        super().__init__(session)
        self.id = check_id(project_id, "project_id")

    @classmethod
    def _from_proto(cls, msg: workspace_pb2.Project, session: Session) -> Project:
        p = cls(msg.id, session)
        p._set(msg)
        return p

    def _fetch(self) -> workspace_pb2.Project:
        req = workspace_pb2.GetProjectRequest(project_id=self.id)
        return self._session.get_project(req).project

    @property
    def name(self) -> str:
        """Name, unique within its workspace (cached)."""
        return self._m().name

    @property
    def username(self) -> str:
        """The owner: who created it ("" if made before users existed) (cached)."""
        return self._m().username

    @property
    def description(self) -> str:
        """Description (cached)."""
        return self._m().description

    @property
    def workspace_id(self) -> int:
        """Its workspace's id (cached)."""
        return self._m().workspace_id

    @property
    def archived(self) -> bool:
        """Whether it is archived (cached)."""
        return self._m().archived

    @property
    def num_experiments(self) -> int:
        """How many experiments it holds (cached)."""
        return self._m().num_experiments

    def list_experiments(
        self,
        states: Iterable[ExperimentState | str] | None = None,
        include_archived: bool = False,
    ) -> list[Experiment]:
        """Its experiments in id order.

        Args:
            states: Only these states (None: all).
            include_archived: Also archived ones.

        Returns:
            A list of hydrated :class:`Experiment` objects.

        Raises:
            NotFoundError: The project does not exist.
        """
        return list(
            iter_experiments(
                self._session,
                project_id=self.id,
                states=states,
                include_archived=include_archived,
            )
        )

    @property
    def notes(self) -> list[dict[str, str]]:
        """Determined's project notes: ``[{"name": ..., "contents": ...}, ...]`` (cached)."""
        return [{"name": n.name, "contents": n.contents} for n in self._m().notes]

    def _patch(self, req: workspace_pb2.PatchProjectRequest) -> None:
        req.project_id = self.id
        self._set(self._session.patch_project(req).project)

    def set_name(self, name: str) -> None:
        """Rename the project (updates the cache).

        Raises:
            InvalidArgumentError: An empty name.
            AlreadyExistsError: The workspace has a project with that name.
            NotFoundError: The project does not exist.
        """
        if not isinstance(name, str):
            raise errors.InvalidArgumentError(f"name: must be a string, got {name!r}")
        self._patch(workspace_pb2.PatchProjectRequest(name=name))

    def set_description(self, description: str) -> None:
        """Set the description (updates the cache).

        Raises:
            NotFoundError: The project does not exist.
        """
        if not isinstance(description, str):
            raise errors.InvalidArgumentError(f"description: must be a string, got {description!r}")
        self._patch(workspace_pb2.PatchProjectRequest(description=description))

    def archive(self) -> None:
        """Archive the project (updates the cache)."""
        self._patch(workspace_pb2.PatchProjectRequest(archived=True))

    def unarchive(self) -> None:
        """Unarchive the project (updates the cache)."""
        self._patch(workspace_pb2.PatchProjectRequest(archived=False))

    def add_note(self, name: str, contents: str) -> None:
        """Append a note (updates ``notes``).

        Raises:
            InvalidArgumentError: An empty name or a non-string contents.
            NotFoundError: The project does not exist.
        """
        if not isinstance(name, str) or not isinstance(contents, str):
            raise errors.InvalidArgumentError("name and contents: must be strings")
        current = [(n.name, n.contents) for n in self._fetch().notes]
        self._set_notes([*current, (name, contents)])

    def remove_note(self, name: str) -> None:
        """Remove the notes with this name (updates ``notes``).

        Raises:
            NotFoundError: The project does not exist, or has no note of that name.
        """
        current = [(n.name, n.contents) for n in self._fetch().notes]
        kept = [(n, c) for n, c in current if n != name]
        if len(kept) == len(current):
            raise errors.NotFoundError(f"project {self.id} has no note named {name!r}")
        self._set_notes(kept)

    def _set_notes(self, notes: list[tuple[str, str]]) -> None:
        self._patch(
            workspace_pb2.PatchProjectRequest(
                set_notes=True,
                notes=[workspace_pb2.ProjectNote(name=n, contents=c) for n, c in notes],
            )
        )

    def delete(self) -> None:
        """Delete the project.

        Raises:
            FailedPreconditionError: It holds experiments or is the default project.
            NotFoundError: The project does not exist.
        """
        self._session.delete_project(workspace_pb2.DeleteProjectRequest(project_id=self.id))

    def __repr__(self) -> str:
        return f"Project(id={self.id})"


class Workspace(Resource[workspace_pb2.Workspace]):
    """A workspace: a group of projects (the default one is ``"Uncategorized"``, id 1).

    ``Workspace(workspace_id, session)`` builds a blank object without a request. Determined's
    spelling, ``Workspace(session, workspace_id=None, workspace_name=None)``, is accepted too (a
    name is looked up at once). Cached attributes (refreshed by :meth:`reload`): ``name``,
    ``archived``, ``num_projects``.

    Args:
        id_or_session: The workspace's id; or, in Determined's order, the session.
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
        workspace_id: The workspace's id, by keyword.
        workspace_name: The workspace's name, instead of its id.

    Raises:
        InvalidArgumentError: Neither or both of id and name, or a bad one.
        NotFoundError: No workspace has that name.
    """

    def __init__(
        self,
        id_or_session: int | SessionLike | None = None,
        session: SessionLike | None = None,
        *,
        workspace_id: int | None = None,
        workspace_name: str | None = None,
    ) -> None:
        if isinstance(id_or_session, bool):
            raise errors.InvalidArgumentError(
                f"workspace_id: must be a positive integer, got {id_or_session!r}"
            )
        if isinstance(id_or_session, int):
            if workspace_id is not None:
                raise errors.InvalidArgumentError("workspace_id: given twice")
            workspace_id = id_or_session
        elif id_or_session is not None:
            if session is not None:
                raise errors.InvalidArgumentError("session: given twice")
            session = id_or_session  # Determined's order: Workspace(session, workspace_id=...)
        super().__init__(session)
        if (workspace_id is None) == (workspace_name is None):
            raise errors.InvalidArgumentError(
                "workspace_id and workspace_name: give exactly one of them"
            )
        if workspace_name is not None:
            if not isinstance(workspace_name, str) or not workspace_name:
                raise errors.InvalidArgumentError(
                    f"workspace_name: must be a non-empty string, got {workspace_name!r}"
                )
            req = workspace_pb2.GetWorkspaceRequest(name=workspace_name)
            msg = self._session.get_workspace(req).workspace
            self.id = msg.id
            self._set(msg)
        else:
            self.id = check_id(workspace_id, "workspace_id")

    @classmethod
    def _from_proto(cls, msg: workspace_pb2.Workspace, session: Session) -> Workspace:
        w = cls(msg.id, session)
        w._set(msg)
        return w

    def _fetch(self) -> workspace_pb2.Workspace:
        req = workspace_pb2.GetWorkspaceRequest(workspace_id=self.id)
        return self._session.get_workspace(req).workspace

    @property
    def name(self) -> str:
        """Name, unique (cached)."""
        return self._m().name

    @property
    def username(self) -> str:
        """The owner: who created it ("" if made before users existed) (cached)."""
        return self._m().username

    @property
    def archived(self) -> bool:
        """Whether it is archived (cached)."""
        return self._m().archived

    @property
    def num_projects(self) -> int:
        """How many projects it holds (cached)."""
        return self._m().num_projects

    def create_project(self, name: str, description: str = "") -> Project:
        """Create a project in this workspace.

        Args:
            name: Unique within the workspace.
            description: Free text.

        Returns:
            The new project.

        Raises:
            AlreadyExistsError: The workspace has a project of that name.
            InvalidArgumentError: Empty name.
            NotFoundError: The workspace does not exist.
        """
        if not isinstance(name, str) or not name.strip():
            raise errors.InvalidArgumentError(f"name: must be a non-empty string, got {name!r}")
        req = workspace_pb2.CreateProjectRequest(
            workspace_id=self.id, name=name, description=description
        )
        return Project._from_proto(self._session.create_project(req).project, self._session)

    def get_project(self, project: str | int) -> Project:
        """A project of this workspace by name (or by id).

        Args:
            project: The project's name, or its id.

        Returns:
            The project (hydrated).

        Raises:
            NotFoundError: No such project in this workspace.
        """
        if isinstance(project, int) and not isinstance(project, bool):
            req = workspace_pb2.GetProjectRequest(project_id=check_id(project, "project"))
        else:
            req = workspace_pb2.GetProjectRequest(workspace_id=self.id, name=str(project))
        msg = self._session.get_project(req).project
        if msg.workspace_id != self.id:
            raise errors.NotFoundError(f"project {project!r} not found in workspace {self.id}")
        return Project._from_proto(msg, self._session)

    def list_projects(self) -> list[Project]:
        """Its projects.

        Returns:
            A list of hydrated :class:`Project` objects.

        Raises:
            NotFoundError: The workspace does not exist.
        """
        req = workspace_pb2.ListProjectsRequest(workspace_id=self.id)
        resp = self._session.list_projects(req)
        return [Project._from_proto(p, self._session) for p in resp.projects]

    def list_experiments(
        self,
        states: Iterable[ExperimentState | str] | None = None,
        include_archived: bool = False,
    ) -> list[Experiment]:
        """Experiments of all its projects, in id order.

        Args:
            states: Only these states (None: all).
            include_archived: Also archived ones.

        Returns:
            A list of hydrated :class:`Experiment` objects.
        """
        return list(
            iter_experiments(
                self._session,
                workspace_id=self.id,
                states=states,
                include_archived=include_archived,
            )
        )

    def delete_project(self, project_name: str) -> None:
        """Delete one of its projects by name (Determined's call).

        Raises:
            FailedPreconditionError: The project holds experiments.
            NotFoundError: No such project in this workspace.
        """
        self.get_project(project_name).delete()

    def delete(self) -> None:
        """Delete the workspace.

        Raises:
            FailedPreconditionError: It holds experiments or is the default workspace.
            NotFoundError: The workspace does not exist.
        """
        self._session.delete_workspace(workspace_pb2.DeleteWorkspaceRequest(workspace_id=self.id))

    def __repr__(self) -> str:
        return f"Workspace(id={self.id})"
