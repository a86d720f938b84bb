"""determined_sdk: the Python SDK of the platform.

``from determined_sdk import Determined`` for a client object, or
``from determined_sdk import client`` for module-level calls over a default client. Resources
(:class:`Experiment`, :class:`Trial`, :class:`Checkpoint`, ...) cache what they fetched;
``reload()`` refreshes them. Every failure is a :class:`DeterminedError` subclass.

Importing this package loads nothing else; each name loads its module on first use (gRPC and the
generated protocol code, never an ML framework), so ``determined_sdk.errors`` or the generated
code alone does not pull in the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time they load on first use
    from determined_sdk._checkpoint import Checkpoint, CheckpointTrainingMetadata
    from determined_sdk._client import Determined, MasterInfo, User
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
    from determined_sdk._session import RetryPolicy, Session
    from determined_sdk._trial import LogLine, MetricSeries, Trial, TrialMetrics
    from determined_sdk._workspace import Project, Workspace
    from determined_sdk.errors import (
        AlreadyExistsError,
        DeadlineExceededError,
        DeterminedError,
        FailedPreconditionError,
        InternalError,
        InvalidArgumentError,
        MasterUnavailableError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        UnauthenticatedError,
    )

__all__ = [
    "AlreadyExistsError",
    "Checkpoint",
    "CheckpointSortBy",
    "CheckpointState",
    "CheckpointTrainingMetadata",
    "DeadlineExceededError",
    "Determined",
    "DeterminedError",
    "DownloadMode",
    "Experiment",
    "ExperimentSortBy",
    "ExperimentState",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "LogLevel",
    "LogLine",
    "MasterInfo",
    "MasterUnavailableError",
    "MetricSeries",
    "Model",
    "ModelSortBy",
    "ModelVersion",
    "NotFoundError",
    "OrderBy",
    "PermissionDeniedError",
    "Project",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Session",
    "Trial",
    "TrialMetrics",
    "TrialSortBy",
    "TrialState",
    "UnauthenticatedError",
    "User",
    "Workspace",
]

__version__ = "0.1.0"


#: Where each public name lives: ``import determined_sdk`` loads a module on first use of one of
#: its names, so a process that needs only ``determined_sdk.errors`` or the generated code (a
#: trial's ``core_api``, the supervisor) does not pay for the client, the resources and their
#: imports.
_LAZY: dict[str, str] = {
    "Checkpoint": "_checkpoint",
    "CheckpointTrainingMetadata": "_checkpoint",
    "Determined": "_client",
    "MasterInfo": "_client",
    "User": "_client",
    "CheckpointSortBy": "_enums",
    "CheckpointState": "_enums",
    "DownloadMode": "_enums",
    "ExperimentSortBy": "_enums",
    "ExperimentState": "_enums",
    "LogLevel": "_enums",
    "ModelSortBy": "_enums",
    "OrderBy": "_enums",
    "TrialSortBy": "_enums",
    "TrialState": "_enums",
    "Experiment": "_experiment",
    "Model": "_model",
    "ModelVersion": "_model",
    "RetryPolicy": "_session",
    "Session": "_session",
    "LogLine": "_trial",
    "Trial": "_trial",
    "TrialMetrics": "_trial",
    "MetricSeries": "_trial",
    "Project": "_workspace",
    "Workspace": "_workspace",
    "AlreadyExistsError": "errors",
    "DeadlineExceededError": "errors",
    "DeterminedError": "errors",
    "FailedPreconditionError": "errors",
    "InternalError": "errors",
    "InvalidArgumentError": "errors",
    "MasterUnavailableError": "errors",
    "NotFoundError": "errors",
    "PermissionDeniedError": "errors",
    "ResourceExhaustedError": "errors",
    "UnauthenticatedError": "errors",
}
#: Deprecated aliases (they warn on every use), answered by :mod:`determined_sdk.client`.
_RENAMED = frozenset({"TrialReference", "ExperimentReference"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "client":  # ``determined_sdk.client`` without importing it first
        return importlib.import_module(f"{__name__}.client")
    if name in _RENAMED:
        return importlib.import_module(f"{__name__}.client").renamed_attribute(__name__, name)
    # Not ours: ``from determined_sdk import errors`` then imports the submodule itself.
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "client"})
