"""determined_sdk: the Python SDK of the platform.

``from determined_sdk import Determined`` for a client object, or
``from determined_sdk import client`` for module-level calls over a default client. Resources
(:class:`Experiment`, :class:`Trial`, :class:`Checkpoint`, ...) cache what they fetched;
``reload()`` refreshes them. Every failure is a :class:`DeterminedError` subclass.

Importing this package loads only gRPC and the generated protocol code (no ML framework).
"""

from __future__ import annotations

from typing import Any

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
from determined_sdk._trial import LogLine, Trial, TrialMetrics
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


def __getattr__(name: str) -> Any:
    # ``determined_sdk.client`` without importing it first; deprecated aliases
    # (TrialReference, ExperimentReference) warn on every use.
    import importlib

    client = importlib.import_module("determined_sdk.client")
    if name == "client":
        return client
    renamed_attribute = client.renamed_attribute

    return renamed_attribute(__name__, name)
