"""Determined's ``determined.core`` names, for scripts that call ``det.core.init()``.

``import core_api as det`` (or ``from core_api import core``) and the rest of the script stays
as it was: ``det.core.init(distributed=...)``, ``det.core.DistributedContext``,
``det.core.PreemptMode``. Each name is the same object as in :mod:`core_api`.
"""

from __future__ import annotations

from core_api._checkpoint import CheckpointContext, DownloadMode
from core_api._context import Context, TensorboardMode, init
from core_api._distributed import DistributedContext
from core_api._preempt import PreemptContext, PreemptMode
from core_api._searcher import SearcherContext, SearcherMode, SearcherOperation
from core_api._train import EarlyExitReason, TrainContext


class DummyDistributedContext(DistributedContext):
    """Determined's name for the single-process context (rank 0 of 1)."""

    def __init__(self) -> None:
        super().__init__(rank=0, size=1, local_rank=0, local_size=1, cross_rank=0, cross_size=1)


__all__ = [
    "CheckpointContext",
    "Context",
    "DistributedContext",
    "DownloadMode",
    "DummyDistributedContext",
    "EarlyExitReason",
    "PreemptContext",
    "PreemptMode",
    "SearcherContext",
    "SearcherMode",
    "SearcherOperation",
    "TensorboardMode",
    "TrainContext",
    "init",
]
