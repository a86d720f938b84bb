"""PyTorchTrial on the platform: a :class:`PyTorchTrial` (Determined's shape), its
:class:`PyTorchTrialContext` and the :class:`Trainer` that runs the loop.

.. code-block:: python

    with core_api.pytorch.init(hparams={...}) as context:
        trial = MyTrial(context)
        Trainer(trial, context).fit(max_length=Epoch(5), validation_period=Batch(100))

On-cluster the searcher's operations decide the length (in batches, records or epochs, via
``records_per_epoch``), the config's ``min_validation_period`` / ``min_checkpoint_period`` the
periods; the trial pauses at any batch and resumes exactly; with ``slots_per_trial > 1`` every
rank runs the same loop on its share of each batch under ``DistributedDataParallel``.
Off-cluster (or unmanaged) the same loop runs with ``fit(max_length=...)``.

Needs torch; ``import core_api`` alone never imports it.
"""

from __future__ import annotations

from core_api.pytorch._context import LRScheduler, PyTorchTrialContext, StepMode, init
from core_api.pytorch._trainer import Trainer
from core_api.pytorch._trial import PyTorchTrial
from core_api.pytorch._units import Batch, Epoch, Record, TrainUnit

__all__ = [
    "Batch",
    "Epoch",
    "LRScheduler",
    "PyTorchTrial",
    "PyTorchTrialContext",
    "Record",
    "StepMode",
    "TrainUnit",
    "Trainer",
    "init",
]
