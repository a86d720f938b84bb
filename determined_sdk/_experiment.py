"""The :class:`Experiment` resource."""

from __future__ import annotations

import functools
import io
import itertools
import os
import pathlib
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO, cast

from determined_sdk import errors
from determined_sdk._checkpoint import Checkpoint, list_checkpoints
from determined_sdk._enums import (
    CheckpointSortBy,
    ExperimentState,
    OrderBy,
    TrialSortBy,
    TrialState,
)
from determined_sdk._resource import (
    Resource,
    SessionLike,
    check_id,
    check_limit,
    deprecated,
    loads,
    str_list,
)
from determined_sdk._session import Session
from determined_sdk._trial import Trial
from determined_sdk.proto import common_pb2, experiment_pb2, workspace_pb2

if TYPE_CHECKING:
    import pandas

_A = experiment_pb2.ExperimentAction
TRIALS_PAGE_SIZE = 1000

#: One experiment of a columnar list, in the field order of ``ExperimentSummaryColumns``.
SummaryRow = tuple[Any, ...]
#: Each field of ``ExperimentSummaryColumns`` and its default (None: always sent).
_COLUMNS = (
    ("id", None),
    ("name", None),
    ("description", ""),
    ("labels_json", None),
    ("state", None),
    ("archived", False),
    ("progress", None),
    ("project_id", None),
    ("workspace_id", None),
    ("start_time", None),
    ("end_time", 0.0),
    ("searcher_name", None),
    ("num_trials", None),
    ("unmanaged", False),
    ("parent_error", ""),
    ("notes", ""),
    ("username", ""),
)
_DEFAULTS = dict(_COLUMNS)


class SummaryPage:
    """One columnar list reply; each column becomes a Python list the first time one of its
    experiments reads that field (listing alone converts only the ids)."""

    __slots__ = ("_cols", "_lists", "size")

    def __init__(self, cols: experiment_pb2.ExperimentSummaryColumns) -> None:
        self._cols = cols
        self._lists: dict[str, list[Any]] = {}
        self.size = len(cols.id)

    def column(self, field: str) -> list[Any]:
        """Every experiment's value of ``field`` (a field sent with no entries: defaults)."""
        got = self._lists.get(field)
        if got is None:
            values = getattr(self._cols, field)
            default = _DEFAULTS[field]
            got = list(values) if len(values) or default is None else [default] * self.size
            self._lists[field] = got
        return got

    def row(self, i: int) -> SummaryRow:
        """The ``i``-th experiment's fields, in :data:`_COLUMNS` order."""
        return tuple(self.column(name)[i] for name, _ in _COLUMNS)


@functools.lru_cache(maxsize=4096)
def _labels(text: str) -> tuple[str, ...]:
    # A list repeats the same few label sets over thousands of rows: decode each set once.
    return tuple(loads(text, []))


def _summary_message(row: SummaryRow) -> experiment_pb2.Experiment:
    (i, name, desc, labels, state, arch, prog, proj, ws, start, end, srch, n, unm, err, notes,
     user) = row  # fmt: skip
    return experiment_pb2.Experiment(
        summary=True,
        id=i,
        name=name,
        description=desc,
        labels=_labels(labels),
        state=state,
        archived=arch,
        progress=prog,
        project_id=proj,
        workspace_id=ws,
        start_time=start,
        end_time=end,
        searcher_name=srch,
        num_trials=n,
        unmanaged=unm,
        parent_error=err,
        notes=notes,
        username=user,
    )


class Experiment(Resource[experiment_pb2.Experiment]):
    """An experiment: a config, model code, and the trials its searcher runs.

    ``Experiment(experiment_id, session)`` builds a blank object without a request; actions
    (:meth:`pause`, :meth:`kill`, ...), :meth:`list_trials` and :meth:`list_checkpoints` work on
    it without fetching, and reading a cached attribute fetches it once.

    Cached attributes (refreshed by :meth:`reload`; :meth:`wait` reloads too): ``name``,
    ``description``, ``labels``, ``config``, ``state``, ``progress``, ``archived``,
    ``project_id``, ``workspace_id``, ``start_time``, ``end_time``, ``searcher_name``,
    ``num_trials``, ``unmanaged``, ``original_config``, ``error``. Setters update the master
    and the attribute they set (``set_name`` -> ``name``, ``add_label`` -> ``labels``,
    ``archive`` -> ``archived``, ``move_to_project`` -> ``project_id``/``workspace_id``); the
    state-changing actions do not touch ``state``: call :meth:`reload` to see it.

    Args:
        experiment_id: The experiment's id.
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
    """

    def __init__(self, experiment_id: int, session: SessionLike | None = None) -> None:
        super().__init__(session)
        self.id = check_id(experiment_id, "experiment_id")

    #: The columnar list reply this listed summary came from and its place there, until
    #: something needs its message (see :meth:`_listed`).
    _page: SummaryPage | None = None
    _i = 0

    @classmethod
    def _from_proto(cls, msg: experiment_pb2.Experiment, session: Session) -> Experiment:
        e = cls._adopt(msg, session)
        e.id = msg.id
        return e

    @classmethod
    def _listed(cls, page: SummaryPage, i: int, experiment_id: int, session: Session) -> Experiment:
        """A hydrated object for the ``i``-th experiment of a columnar list reply: its
        attributes read the page's columns; its message is built when one is needed."""
        e = cls._adopt(None, session)
        e.id = experiment_id
        e._page = page
        e._i = i
        return e

    def _m(self) -> experiment_pb2.Experiment:
        page = self._page
        if page is not None:
            self._page = None
            if self._msg is None:
                self._msg = _summary_message(page.row(self._i))
        return super()._m()

    def _set(self, msg: experiment_pb2.Experiment) -> None:
        self._page = None  # a fetched message replaces what the list said
        super()._set(msg)

    def _get(self, field: str) -> Any:
        """A summary field: from the listed page while there is one (no message built)."""
        page = self._page
        return page.column(field)[self._i] if page is not None else getattr(self._m(), field)

    @property
    def hydrated(self) -> bool:
        """True once this object holds the master's data (fetched or given at creation)."""
        return self._msg is not None or self._page is not None

    def _fetch(self) -> experiment_pb2.Experiment:
        req = experiment_pb2.GetExperimentRequest(experiment_id=self.id)
        return self._session.get_experiment(req).experiment

    # -- cached attributes ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Name (cached; :meth:`set_name` updates it)."""
        return cast("str", self._get("name"))

    @property
    def username(self) -> str:
        """The owner: who created it ("" if made before users existed) (cached)."""
        return cast("str", self._get("username"))

    @property
    def description(self) -> str:
        """Description (cached; :meth:`set_description` updates it)."""
        return cast("str", self._get("description"))

    @property
    def labels(self) -> set[str]:
        """Labels, a set as in Determined (cached; :meth:`add_label`, :meth:`remove_label`
        and :meth:`set_labels` update them)."""
        page = self._page
        if page is not None:
            return set(_labels(page.column("labels_json")[self._i]))
        return set(self._m().labels)

    @property
    def notes(self) -> str:
        """Free-text notes (cached; :meth:`set_notes` updates them)."""
        return cast("str", self._get("notes"))

    def _full(self) -> experiment_pb2.Experiment:
        """The cached message with its configs: objects from a list hold a summary without
        them, fetched once on first use (a list of thousands stays cheap)."""
        msg = self._m()
        if msg.summary:
            self.reload()
            msg = self._m()
        return msg

    @property
    def config(self) -> dict[str, Any]:
        """The validated config with defaults filled in (cached; never changes)."""
        self._full()
        config: dict[str, Any] = self._json("config_json")
        return config

    @property
    def original_config(self) -> str:
        """The config text as submitted (cached)."""
        return self._full().original_config

    @property
    def state(self) -> ExperimentState:
        """State (cached: call :meth:`reload` to see a change)."""
        return ExperimentState._from_proto(self._get("state"))

    @property
    def progress(self) -> float:
        """0..1, aggregated over its trials by the searcher (cached)."""
        return cast("float", self._get("progress"))

    @property
    def archived(self) -> bool:
        """Whether it is archived (cached; :meth:`archive`/:meth:`unarchive` update it)."""
        return cast("bool", self._get("archived"))

    @property
    def project_id(self) -> int:
        """Its project's id (cached; :meth:`move_to_project` updates it)."""
        return cast("int", self._get("project_id"))

    @property
    def workspace_id(self) -> int:
        """Its workspace's id (cached; :meth:`move_to_project` updates it)."""
        return cast("int", self._get("workspace_id"))

    @property
    def start_time(self) -> float:
        """Unix time it was created (cached)."""
        return cast("float", self._get("start_time"))

    @property
    def end_time(self) -> float | None:
        """Unix time it ended, None while it is not terminal (cached)."""
        return cast("float", self._get("end_time")) or None

    @property
    def searcher_name(self) -> str:
        """Its searcher (``single``, ``grid``, ``adaptive_asha``, ...) (cached)."""
        return cast("str", self._get("searcher_name"))

    @property
    def num_trials(self) -> int:
        """How many trials it has created (cached)."""
        return cast("int", self._get("num_trials"))

    @property
    def unmanaged(self) -> bool:
        """True for an experiment registered by a script run outside the master (cached)."""
        return cast("bool", self._get("unmanaged"))

    @property
    def error(self) -> str:
        """Why it is in ERROR, empty otherwise (cached)."""
        return cast("str", self._get("parent_error"))

    # -- setters ----------------------------------------------------------------------------
    def _patch(self, req: experiment_pb2.PatchExperimentRequest, fields: Iterable[str]) -> None:
        req.experiment_id = self.id
        fresh = self._session.patch_experiment(req).experiment
        self._take(fresh, fields)

    def _take(self, fresh: experiment_pb2.Experiment, fields: Iterable[str]) -> None:
        """Copy ``fields`` of a message the master returned into the cache (if hydrated)."""
        if not self.hydrated:
            return
        msg = self._m()
        for f in fields:
            if f == "labels":
                del msg.labels[:]
                msg.labels.extend(fresh.labels)
            else:
                setattr(msg, f, getattr(fresh, f))

    def set_name(self, name: str) -> None:
        """Rename the experiment (updates ``name``).

        Raises:
            InvalidArgumentError: Empty name.
            NotFoundError: The experiment does not exist.
        """
        if not isinstance(name, str) or not name.strip():
            raise errors.InvalidArgumentError(f"name: must be a non-empty string, got {name!r}")
        self._patch(experiment_pb2.PatchExperimentRequest(name=name), ["name"])

    def set_description(self, description: str) -> None:
        """Set the description (updates ``description``).

        Raises:
            NotFoundError: The experiment does not exist.
        """
        if not isinstance(description, str):
            raise errors.InvalidArgumentError(f"description: must be a string, got {description!r}")
        self._patch(experiment_pb2.PatchExperimentRequest(description=description), ["description"])

    def set_notes(self, notes: str) -> None:
        """Replace the notes (updates ``notes``).

        Raises:
            InvalidArgumentError: Not a string.
            NotFoundError: The experiment does not exist.
        """
        if not isinstance(notes, str):
            raise errors.InvalidArgumentError(f"notes: must be a string, got {notes!r}")
        self._patch(experiment_pb2.PatchExperimentRequest(notes=notes), ["notes"])

    def add_label(self, label: str) -> None:
        """Add a label (no-op if present; updates ``labels``).

        Raises:
            NotFoundError: The experiment does not exist.
        """
        labels = _label(label)
        self._patch(experiment_pb2.PatchExperimentRequest(add_labels=labels), ["labels"])

    def remove_label(self, label: str) -> None:
        """Remove a label (no-op if absent; updates ``labels``).

        Raises:
            NotFoundError: The experiment does not exist.
        """
        labels = _label(label)
        self._patch(experiment_pb2.PatchExperimentRequest(remove_labels=labels), ["labels"])

    def set_labels(self, labels: Iterable[str]) -> None:
        """Make the labels exactly ``labels`` (updates ``labels``).

        Raises:
            InvalidArgumentError: An empty or non-string label.
            NotFoundError: The experiment does not exist.
        """
        wanted = str_list(labels, "labels")
        if not all(x.strip() for x in wanted):
            raise errors.InvalidArgumentError(f"labels: must be non-empty strings, got {wanted!r}")
        current = set(self._fetch().labels)
        req = experiment_pb2.PatchExperimentRequest(
            add_labels=sorted(set(wanted) - current),
            remove_labels=sorted(current - set(wanted)),
        )
        self._patch(req, ["labels"])

    # -- actions ----------------------------------------------------------------------------
    def _act(self, action: experiment_pb2.ExperimentAction.ValueType, retry: bool = True) -> None:
        req = experiment_pb2.ExperimentActionRequest(experiment_id=self.id, action=action)
        fresh = self._session.experiment_action(req, retry=retry).experiment
        if action in (_A.EXPERIMENT_ACTION_ARCHIVE, _A.EXPERIMENT_ACTION_UNARCHIVE):
            self._take(fresh, ["archived"])

    def activate(self) -> None:
        """Start (or resume) scheduling its trials.

        Raises:
            FailedPreconditionError: It is terminal.
            NotFoundError: The experiment does not exist.
        """
        self._act(_A.EXPERIMENT_ACTION_ACTIVATE)

    def pause(self) -> None:
        """Pause it: running trials checkpoint and stop; :meth:`activate` resumes them.

        Raises:
            FailedPreconditionError: It is terminal.
            NotFoundError: The experiment does not exist.
        """
        self._act(_A.EXPERIMENT_ACTION_PAUSE)

    def cancel(self) -> None:
        """Stop it gracefully (trials checkpoint first); it ends CANCELED.

        Raises:
            NotFoundError: The experiment does not exist.
        """
        self._act(_A.EXPERIMENT_ACTION_CANCEL)

    def kill(self) -> None:
        """Stop it now, without waiting for checkpoints; it ends CANCELED.

        Raises:
            NotFoundError: The experiment does not exist.
        """
        self._act(_A.EXPERIMENT_ACTION_KILL)

    def archive(self) -> None:
        """Hide it from default listings (updates ``archived``).

        Raises:
            FailedPreconditionError: It is not terminal.
            NotFoundError: The experiment does not exist.
        """
        self._act(_A.EXPERIMENT_ACTION_ARCHIVE)

    def unarchive(self) -> None:
        """Undo :meth:`archive` (updates ``archived``).

        Raises:
            NotFoundError: The experiment does not exist.
        """
        self._act(_A.EXPERIMENT_ACTION_UNARCHIVE)

    def delete(self) -> None:
        """Delete it with its trials, metrics, logs and checkpoints (files included).

        Raises:
            FailedPreconditionError: It is not terminal.
            NotFoundError: The experiment does not exist.
        """
        # Not retried: a resend after a lost reply would answer NOT_FOUND.
        self._act(_A.EXPERIMENT_ACTION_DELETE, retry=False)

    def move_to_project(self, workspace_name: str, project_name: str) -> None:
        """Move it into another project (updates ``project_id`` and ``workspace_id``).

        Args:
            workspace_name: Name of the target workspace.
            project_name: Name of the project within that workspace.

        Raises:
            NotFoundError: No such workspace, project or experiment.
        """
        s = self._session
        ws = s.get_workspace(workspace_pb2.GetWorkspaceRequest(name=workspace_name)).workspace
        proj = s.get_project(
            workspace_pb2.GetProjectRequest(workspace_id=ws.id, name=project_name)
        ).project
        req = experiment_pb2.MoveExperimentRequest(experiment_id=self.id, project_id=proj.id)
        fresh = s.move_experiment(req).experiment
        self._take(fresh, ["project_id", "workspace_id"])

    # -- waiting ----------------------------------------------------------------------------
    def wait(
        self,
        interval: float = 5.0,
        timeout: float | None = None,
        *,
        progress: bool | None = None,
    ) -> ExperimentState:
        """Block until it reaches a terminal state, polling every ``interval`` seconds.

        Reloads this object as it polls, so the cache ends fresh.

        Args:
            interval: Seconds between polls.
            timeout: Give up after this many seconds (None: wait forever).
            progress: Show a progress line on stderr (state, progress, trials, time waited),
                rewritten in place on a terminal, one line per change otherwise. None: only
                when stderr is a terminal.

        Returns:
            The terminal state (COMPLETED, CANCELED, ERROR or DELETED).

        Raises:
            ValueError: The experiment is PAUSED (it would never end), as in Determined.
            DeadlineExceededError: ``timeout`` passed first.
            NotFoundError: The experiment does not exist.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        line = _ProgressLine(sys.stderr, progress)
        start = time.monotonic()
        while True:
            self.reload()
            state = self.state
            line.show(
                f"experiment {self.id}: {state.value}, {self.progress:.0%} done, "
                f"{self.num_trials} trial{'' if self.num_trials == 1 else 's'}",
                time.monotonic() - start,
            )
            if state.is_terminal:
                line.end()
                return state
            if state is ExperimentState.PAUSED:
                raise ValueError(
                    f"experiment {self.id} is PAUSED: activate it before waiting for it to end"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.DeadlineExceededError(
                    f"experiment {self.id} still {state.value} after {timeout}s"
                )
            time.sleep(interval)

    def await_first_trial(self, interval: float = 0.1, timeout: float | None = None) -> Trial:
        """Block until the experiment has created a trial and return it.

        Args:
            interval: Seconds between polls.
            timeout: Give up after this many seconds (None: wait forever).

        Returns:
            The first trial (hydrated).

        Raises:
            DeadlineExceededError: ``timeout`` passed first.
            FailedPreconditionError: The experiment ended without creating a trial.
            NotFoundError: The experiment does not exist.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        s = self._session
        req = experiment_pb2.ListExperimentTrialsRequest(
            experiment_id=self.id, pagination=common_pb2.Pagination(limit=1)
        )
        last_check = time.monotonic()
        while True:
            resp = s.list_experiment_trials(req)
            if resp.trials:
                return Trial._from_proto(resp.trials[0], s)
            now = time.monotonic()
            if now - last_check >= 1.0:
                # An experiment that ends (config error, killed) will never make a trial.
                last_check = now
                state = ExperimentState._from_proto(self._fetch().state)
                if state.is_terminal:
                    raise errors.FailedPreconditionError(
                        f"experiment {self.id} ended {state.value} without creating a trial"
                    )
            if deadline is not None and now >= deadline:
                raise errors.DeadlineExceededError(
                    f"experiment {self.id} created no trial within {timeout}s"
                )
            time.sleep(interval)

    # -- collections ------------------------------------------------------------------------
    def iter_trials(
        self,
        sort_by: TrialSortBy | None = None,
        order_by: OrderBy | None = None,
        limit: int | None = None,
        *,
        states: Iterable[TrialState] | None = None,
        page_size: int = TRIALS_PAGE_SIZE,
    ) -> Iterator[Trial]:
        """Its trials, fetched lazily a page at a time (id order), or sorted.

        Args:
            sort_by: A :class:`TrialSortBy` key (None: id order, streamed by page; a key
                reads every trial first, then sorts).
            order_by: ``OrderBy.ASC`` (default) or ``OrderBy.DESC``.
            limit: At most this many trials.
            states: Only trials in these states (None: all).
            page_size: Trials per request.

        Returns:
            An iterator of hydrated :class:`Trial` objects.

        Raises:
            InvalidArgumentError: A bad key, direction, limit or page size.
            NotFoundError: The experiment does not exist (raised on first ``next``).
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise errors.InvalidArgumentError(f"page_size: must be >= 1, got {page_size!r}")
        if sort_by is not None and not isinstance(sort_by, TrialSortBy):
            raise errors.InvalidArgumentError(f"sort_by: must be a TrialSortBy, got {sort_by!r}")
        if order_by is not None and not isinstance(order_by, OrderBy):
            raise errors.InvalidArgumentError(f"order_by: must be an OrderBy, got {order_by!r}")
        cap = check_limit(limit, "limit") if limit is not None else None
        wire_states = [_trial_state(st)._to_proto() for st in states or ()]
        trials = self._iter_trials(wire_states, page_size)
        descending = order_by is not None and order_by.value == "DESC"
        if sort_by is not None or descending:
            key = _TRIAL_KEYS[sort_by or TrialSortBy.ID]
            trials = iter(sorted(trials, key=key, reverse=descending))
        return itertools.islice(trials, cap) if cap is not None else trials

    def _iter_trials(
        self, wire_states: list[common_pb2.TrialState.ValueType], page_size: int
    ) -> Iterator[Trial]:
        s = self._session
        offset = 0
        while True:
            req = experiment_pb2.ListExperimentTrialsRequest(
                experiment_id=self.id,
                states=wire_states,
                pagination=common_pb2.Pagination(offset=offset, limit=page_size),
            )
            resp = s.list_experiment_trials(req)
            for t in resp.trials:
                yield Trial._from_proto(t, s)
            offset += len(resp.trials)
            if not resp.trials or offset >= resp.pagination.total:
                return

    def trials_dataframe(self) -> pandas.DataFrame:
        """Its trials as a pandas DataFrame (needs the ``pandas`` extra).

        Returns:
            One row per trial in id order: ``trial_id``, ``experiment_id``, ``state``,
            ``restarts``, ``steps_completed``, ``searcher_metric``, ``start_time``,
            ``end_time`` (UTC), ``latest_checkpoint_uuid``, the hyperparameters as
            ``hparams.<name>`` (nested ones dotted), and summary metrics as
            ``<group>.<metric>.<stat>`` (``validation.loss.min``; stats min, max, last,
            mean, count).

        Raises:
            FailedPreconditionError: pandas is not installed (the message names the extra).
            NotFoundError: The experiment does not exist.
        """
        from determined_sdk._dataframes import require_pandas, trials_dataframe

        require_pandas()
        return trials_dataframe(self.list_trials())

    def list_trials(
        self,
        sort_by: TrialSortBy | None = None,
        order_by: OrderBy | None = None,
        *,
        states: Iterable[TrialState] | None = None,
    ) -> list[Trial]:
        """All its trials, in id order or sorted.

        Args:
            sort_by: A :class:`TrialSortBy` key (None: id order).
            order_by: ``OrderBy.ASC`` (default) or ``OrderBy.DESC``.
            states: Only trials in these states (None: all).

        Returns:
            A list of hydrated :class:`Trial` objects.

        Raises:
            InvalidArgumentError: A bad key or direction.
            NotFoundError: The experiment does not exist.
        """
        return list(self.iter_trials(sort_by, order_by, states=states))

    def list_checkpoints(
        self,
        sort_by: str | CheckpointSortBy | None = None,
        order_by: OrderBy | None = None,
        max_results: int | None = None,
    ) -> list[Checkpoint]:
        """Checkpoints of all its trials (every state, DELETED included), sorted on the master.

        Args:
            sort_by: A :class:`CheckpointSortBy`, or a str naming a validation metric
                (``"loss"``). None sorts by the searcher metric.
            order_by: Direction; None lets the master decide (best-first for the searcher
                metric, using the config's ``searcher.smaller_is_better``).
            max_results: At most this many (None: all).

        Returns:
            A list of hydrated :class:`Checkpoint` objects.

        Raises:
            InvalidArgumentError: Bad ``sort_by``/``order_by``/``max_results``.
            NotFoundError: The experiment does not exist.
        """
        return list_checkpoints(
            self._session,
            experiment_id=self.id,
            sort_by=sort_by,
            order_by=order_by,
            max_results=max_results,
        )

    def download_code(self, output_dir: str | os.PathLike[str] | None = None) -> str:
        """Save the experiment's model directory as ``exp-<id>_model_def.tar.gz``, as
        Determined does (:meth:`extract_code` unpacks it instead).

        Args:
            output_dir: Directory to write the file in (default: the current directory;
                created if missing).

        Returns:
            The path of the written file.

        Raises:
            NotFoundError: The experiment does not exist.
        """
        data = self._model_definition()
        target = pathlib.Path(output_dir if output_dir is not None else ".")
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"exp-{self.id}_model_def.tar.gz"
        if not data:  # an experiment made without code: an empty archive
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz"):
                pass
            data = buf.getvalue()
        path.write_bytes(data)
        return str(path)

    def extract_code(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """Unpack the experiment's model directory into ``path`` (created if missing).

        Args:
            path: Target directory.

        Returns:
            ``path`` as a :class:`pathlib.Path`.

        Raises:
            NotFoundError: The experiment does not exist.
        """
        data = self._model_definition()
        target = pathlib.Path(path)
        target.mkdir(parents=True, exist_ok=True)
        if data:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                tar.extractall(target, filter="data")
        return target

    def _model_definition(self) -> bytes:
        req = experiment_pb2.GetModelDefinitionRequest(experiment_id=self.id)
        return self._session.get_model_definition(req).model_definition

    # -- deprecated -------------------------------------------------------------------------
    def get_trials(self) -> list[Trial]:
        """Deprecated: use :meth:`list_trials`."""
        deprecated("Experiment.get_trials()", "Experiment.list_trials()")
        return self.list_trials()

    def top_checkpoint(
        self, sort_by: str | None = None, smaller_is_better: bool | None = None
    ) -> Checkpoint:
        """Deprecated: use ``list_checkpoints(sort_by=..., order_by=..., max_results=1)``."""
        deprecated("Experiment.top_checkpoint()", "Experiment.list_checkpoints(max_results=1)")
        found = self._top(1, sort_by, smaller_is_better)
        if not found:
            raise errors.NotFoundError(f"experiment {self.id} has no checkpoints")
        return found[0]

    def top_n_checkpoints(
        self, limit: int, sort_by: str | None = None, smaller_is_better: bool | None = None
    ) -> list[Checkpoint]:
        """Deprecated: use ``list_checkpoints(sort_by=..., order_by=..., max_results=n)``."""
        deprecated("Experiment.top_n_checkpoints()", "Experiment.list_checkpoints(max_results=n)")
        return self._top(limit, sort_by, smaller_is_better)

    def _top(
        self, limit: int, sort_by: str | None, smaller_is_better: bool | None
    ) -> list[Checkpoint]:
        order = None
        if smaller_is_better is not None:
            order = OrderBy.ASC if smaller_is_better else OrderBy.DESC
        return self.list_checkpoints(sort_by=sort_by, order_by=order, max_results=limit)

    def __repr__(self) -> str:
        return f"Experiment(id={self.id})"


def _none_last(value: float | None) -> tuple[bool, float]:
    return (value is None, value if value is not None else 0.0)


_TRIAL_KEYS: dict[TrialSortBy, Any] = {
    TrialSortBy.ID: lambda t: t.id,
    TrialSortBy.START_TIME: lambda t: (t.start_time, t.id),
    TrialSortBy.END_TIME: lambda t: (_none_last(t.end_time), t.id),
    TrialSortBy.STATE: lambda t: (t.state.value, t.id),
    TrialSortBy.BEST_VALIDATION_METRIC: lambda t: (_none_last(t.searcher_metric), t.id),
    TrialSortBy.BATCHES_PROCESSED: lambda t: (t.steps_completed, t.id),
    TrialSortBy.RESTARTS: lambda t: (t.restarts, t.id),
}


def _label(label: str) -> list[str]:
    labels = str_list(label, "label")
    if not labels or not all(x.strip() for x in labels):
        raise errors.InvalidArgumentError(f"label: must be a non-empty string, got {label!r}")
    return labels


def _trial_state(value: TrialState | str) -> TrialState:
    if isinstance(value, TrialState):
        return value
    try:
        return TrialState(str(value).upper())
    except ValueError:
        raise errors.InvalidArgumentError(f"states: unknown trial state {value!r}") from None


class _ProgressLine:
    """One status line: rewritten in place on a terminal, printed when it changes otherwise."""

    def __init__(self, stream: TextIO, enabled: bool | None) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._on = self._tty if enabled is None else enabled
        self._last = ""
        self._width = 0

    def show(self, text: str, elapsed: float) -> None:
        if not self._on:
            return
        if self._tty:
            full = f"{text} ({elapsed:.0f}s)"
            self._stream.write("\r" + full.ljust(self._width))
            self._width = len(full)
        elif text != self._last:
            self._stream.write(f"{text} ({elapsed:.0f}s)\n")
        self._last = text
        self._stream.flush()

    def end(self) -> None:
        if self._on and self._tty:
            self._stream.write("\n")
            self._stream.flush()
