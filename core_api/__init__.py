"""The Core API: what runs inside training code.

``core_api.init()`` returns a :class:`Context` with ``train`` (metrics, progress), ``checkpoint``
(store/restore/upload/download), ``searcher`` (operations with absolute lengths), ``preempt``
(should_preempt), ``distributed`` (ranks, collectives) and ``info`` (the trial's cluster info).
The same script runs on the cluster, by hand against a master (an unmanaged trial), or with no
master at all. Names and semantics follow Determined's ``determined.core``.

PyTorch Lightning users get a logger, a callback and a searcher-driven ``fit`` in
``core_api.lightning`` (optional; needs ``lightning``). Importing this package does not import
torch (nor Lightning).

A Determined script moves over by changing its import line: ``core_api.core`` holds the names
of ``determined.core`` (so ``core_api.core.init()`` works as ``det.core.init()`` did), and the
package holds those of ``determined`` (``LOG_FORMAT``, ``get_cluster_info``, ``ClusterInfo``,
``TrialInfo``); ``python -m core_api.launch.torch_distributed`` is Determined's launcher.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time they load on first use
    from core_api import core  # noqa: F401  (Determined's det.core names)
    from core_api._checkpoint import CheckpointContext, DownloadMode
    from core_api._context import Context, TensorboardMode, init
    from core_api._distributed import DistributedContext
    from core_api._info import ClusterInfo, TrialInfo, get_cluster_info
    from core_api._preempt import PreemptContext, PreemptMode
    from core_api._searcher import SearcherContext, SearcherMode, SearcherOperation
    from core_api._train import ContextClosedError, EarlyExitReason, TrainContext
    from determined_sdk.checkpoint_storage import SharedFSStorage
    from determined_sdk.errors import DeterminedError, NotFoundError

LOG_FORMAT = "%(levelname)s: [%(process)s] %(name)s: %(message)s"
"""Determined's log format for training code (``logging.basicConfig(format=LOG_FORMAT)``);
the master reads the level of each line written this way."""

__all__ = [
    "LOG_FORMAT",
    "CheckpointContext",
    "ClusterInfo",
    "Context",
    "ContextClosedError",
    "DeterminedError",
    "DistributedContext",
    "DownloadMode",
    "EarlyExitReason",
    "NotFoundError",
    "PreemptContext",
    "PreemptMode",
    "SearcherContext",
    "SearcherMode",
    "SearcherOperation",
    "SharedFSStorage",
    "TensorboardMode",
    "TrainContext",
    "TrialInfo",
    "get_cluster_info",
    "init",
]

#: Where each public name lives. ``import core_api`` loads nothing else: a name's module (and
#: gRPC, protobuf and the generated code behind it) loads on its first use, so a script that
#: only reads ``get_cluster_info()`` or is started just to exit pays for neither.
_LAZY: dict[str, str] = {
    "CheckpointContext": "core_api._checkpoint",
    "DownloadMode": "core_api._checkpoint",
    "SharedFSStorage": "determined_sdk.checkpoint_storage",
    "Context": "core_api._context",
    "TensorboardMode": "core_api._context",
    "init": "core_api._context",
    "DistributedContext": "core_api._distributed",
    "ClusterInfo": "core_api._info",
    "TrialInfo": "core_api._info",
    "get_cluster_info": "core_api._info",
    "PreemptContext": "core_api._preempt",
    "PreemptMode": "core_api._preempt",
    "SearcherContext": "core_api._searcher",
    "SearcherMode": "core_api._searcher",
    "SearcherOperation": "core_api._searcher",
    "ContextClosedError": "core_api._train",
    "EarlyExitReason": "core_api._train",
    "TrainContext": "core_api._train",
    "DeterminedError": "determined_sdk.errors",
    "NotFoundError": "determined_sdk.errors",
}


def __getattr__(name: str) -> Any:
    if name == "core":  # Determined's ``det.core`` names
        return importlib.import_module("core_api.core")
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "core"})
