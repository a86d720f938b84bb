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
from core_api import core  # noqa: E402,F401  (Determined's det.core names)
