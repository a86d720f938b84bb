"""Module-level SDK calls over one default :class:`Determined` client, made on first use.

For scripts and notebooks::

    from determined_sdk import client

    client.login(master="127.0.0.1:8080")        # optional: else $DET_MASTER / localhost:8080
    exp = client.create_experiment(config, "model_dir")
    trial = exp.await_first_trial()
    for line in trial.logs(follow=True):
        print(line, end="")

Every function here is the same-named method of the default client; see :class:`Determined`
for arguments. The default client is created lazily (thread-safe) by the first call, or by
:func:`login`, which replaces it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from determined_sdk import _default as _default_slot
from determined_sdk._checkpoint import Checkpoint, CheckpointTrainingMetadata
from determined_sdk._client import ConfigLike, Determined, MasterInfo
from determined_sdk._enums import (
    CheckpointSortBy,
    CheckpointState,
    DownloadMode,
    ExperimentSortBy,
    ExperimentState,
    LogLevel,
    ModelSortBy,
    OrderBy,
    TrialSortBy,
    TrialState,
)
from determined_sdk._experiment import Experiment
from determined_sdk._model import Model, ModelVersion
from determined_sdk._resource import deprecated
from determined_sdk._trial import LogLine, MetricSeries, Trial, TrialMetrics
from determined_sdk._workspace import Project, Workspace

__all__ = [
    "Checkpoint",
    "CheckpointSortBy",
    "CheckpointState",
    "CheckpointTrainingMetadata",
    "Determined",
    "DownloadMode",
    "Experiment",
    "ExperimentSortBy",
    "ExperimentState",
    "LogLevel",
    "LogLine",
    "MasterInfo",
    "MetricSeries",
    "Model",
    "ModelSortBy",
    "ModelVersion",
    "OrderBy",
    "Project",
    "Trial",
    "TrialMetrics",
    "TrialSortBy",
    "TrialState",
    "Workspace",
    "create_experiment",
    "create_model",
    "create_workspace",
    "delete_workspace",
    "get_checkpoint",
    "get_experiment",
    "get_model",
    "get_model_by_id",
    "get_model_labels",
    "get_trial",
    "get_workspace",
    "iter_trials_metrics",
    "list_experiments",
    "list_models",
    "list_workspaces",
    "login",
    "metric_series",
    "stream_trials_metrics",
]


def _default() -> Determined:
    """The default client, created on first use from ``$DET_MASTER``."""
    d = _default_slot.get()
    assert isinstance(d, Determined)
    return d


def login(
    master: str | None = None, user: str | None = None, password: str | None = None
) -> Determined:
    """Make (or replace) the default client.

    Args:
        master: ``host:port`` (default: ``$DET_MASTER``, else ``localhost:8080``).
        user: User to log in as (None: ``$DET_USER``/``$DET_PASS``, the cached token, or the
            loopback quick start; see :class:`Determined`).
        password: That user's password.

    Returns:
        The new default client.

    Raises:
        UnauthenticatedError: Bad user or password.
    """
    new = Determined(master, user, password)
    old = _default_slot.replace(new)
    if old is not None and old is not new:
        old.close()
    return new


def create_experiment(
    config: ConfigLike,
    model_dir: str | os.PathLike[str] | None = None,
    includes: Iterable[str | os.PathLike[str]] | None = None,
    *,
    activate: bool = True,
    project_id: int | None = None,
    template: str | None = None,
    parent_id: int | None = None,
) -> Experiment:
    """See :meth:`Determined.create_experiment`."""
    return _default().create_experiment(
        config,
        model_dir,
        includes,
        activate=activate,
        project_id=project_id,
        template=template,
        parent_id=parent_id,
    )


def get_experiment(experiment_id: int) -> Experiment:
    """See :meth:`Determined.get_experiment`."""
    return _default().get_experiment(experiment_id)


def list_experiments(
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
    """See :meth:`Determined.list_experiments`."""
    return _default().list_experiments(
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


def get_trial(trial_id: int) -> Trial:
    """See :meth:`Determined.get_trial`."""
    return _default().get_trial(trial_id)


def get_checkpoint(uuid: str) -> Checkpoint:
    """See :meth:`Determined.get_checkpoint`."""
    return _default().get_checkpoint(uuid)


def iter_trials_metrics(
    trial_ids: Sequence[int] | int,
    group: str | None = None,
    *,
    names: Iterable[str] | None = None,
    min_steps: int | None = None,
    max_steps: int | None = None,
    follow: bool = False,
) -> Iterator[TrialMetrics]:
    """See :meth:`Determined.iter_trials_metrics`."""
    return _default().iter_trials_metrics(
        trial_ids, group, names=names, min_steps=min_steps, max_steps=max_steps, follow=follow
    )


def metric_series(
    trial_ids: Sequence[int] | int,
    names: Iterable[str] | str,
    group: str = "training",
    *,
    max_points: int | None = None,
) -> dict[int, dict[str, MetricSeries]]:
    """See :meth:`Determined.metric_series`."""
    return _default().metric_series(trial_ids, names, group, max_points=max_points)


def stream_trials_metrics(
    trial_ids: Sequence[int] | int, group: str | None = None
) -> Iterator[TrialMetrics]:
    """Deprecated (as in Determined): use :func:`iter_trials_metrics`."""
    deprecated("client.stream_trials_metrics()", "client.iter_trials_metrics()")
    return _default().iter_trials_metrics(trial_ids, group)


def create_workspace(name: str) -> Workspace:
    """See :meth:`Determined.create_workspace`."""
    return _default().create_workspace(name)


def get_workspace(workspace: str | int) -> Workspace:
    """See :meth:`Determined.get_workspace`."""
    return _default().get_workspace(workspace)


def delete_workspace(workspace: str | int) -> None:
    """See :meth:`Determined.delete_workspace`."""
    _default().delete_workspace(workspace)


def list_workspaces(name: str | None = None) -> list[Workspace]:
    """See :meth:`Determined.list_workspaces`."""
    return _default().list_workspaces(name)


def create_model(
    name: str,
    description: str = "",
    metadata: dict[str, Any] | None = None,
    labels: Iterable[str] | None = None,
    workspace_name: str | None = None,
) -> Model:
    """See :meth:`Determined.create_model`."""
    return _default().create_model(name, description, metadata, labels, workspace_name)


def get_model(identifier: str | int) -> Model:
    """See :meth:`Determined.get_model`."""
    return _default().get_model(identifier)


def get_model_by_id(model_id: int) -> Model:
    """See :meth:`Determined.get_model_by_id`."""
    return _default().get_model_by_id(model_id)


def get_model_labels() -> list[str]:
    """See :meth:`Determined.get_model_labels`."""
    return _default().get_model_labels()


def list_models(
    name: str | None = None,
    labels: Iterable[str] | None = None,
    include_archived: bool = False,
    workspace_name: str | None = None,
) -> list[Model]:
    """See :meth:`Determined.list_models`."""
    return _default().list_models(name, labels, include_archived, workspace_name)


def get_master_info() -> MasterInfo:
    """See :meth:`Determined.get_master_info`."""
    return _default().get_master_info()


# -- deprecated ---------------------------------------------------------------------------------
def get_models(*args: Any, **kwargs: Any) -> list[Model]:
    """Deprecated: use :func:`list_models` (takes Determined's ``sort_by``/``order_by``)."""
    deprecated("client.get_models()", "client.list_models()")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # warned once, above
        return _default().get_models(*args, **kwargs)


def get_workspaces() -> list[Workspace]:
    """Deprecated: use :func:`list_workspaces`."""
    deprecated("client.get_workspaces()", "client.list_workspaces()")
    return _default().list_workspaces()


def get_experiments(**filters: Any) -> list[Experiment]:
    """Deprecated: use :func:`list_experiments`."""
    deprecated("client.get_experiments()", "client.list_experiments()")
    return _default().list_experiments(**filters)


_RENAMED = {"TrialReference": ("Trial", Trial), "ExperimentReference": ("Experiment", Experiment)}


def renamed_attribute(module: str, name: str) -> Any:
    """The new object for a deprecated name (warning once per use), or AttributeError."""
    if name in _RENAMED:
        new_name, obj = _RENAMED[name]
        import warnings

        warnings.warn(
            f"{module}.{name} is deprecated and will be removed; use {module}.{new_name}.",
            DeprecationWarning,
            stacklevel=3,
        )
        return obj
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    return renamed_attribute(__name__, name)
