"""The user's side of the PyTorch API: :class:`PyTorchTrial`, in Determined's shape."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from core_api.pytorch._context import PyTorchTrialContext

#: What ``train_batch`` may return: a loss tensor, or a dict of metrics (tensors or numbers).
TrainResult = torch.Tensor | Mapping[str, Any]


class PyTorchTrial(abc.ABC):
    """Subclass this; the :class:`~core_api.pytorch.Trainer` runs the loop around it.

    In ``__init__`` build the model, the optimizer and (optionally) an LR scheduler and wrap
    each with the context (``context.wrap_model(...)``, ``context.wrap_optimizer(...)``,
    ``context.wrap_lr_scheduler(...)``): wrapped objects are moved to the device, made
    data-parallel when the trial has several slots, checkpointed and restored by the trainer.

    Args:
        context: the trial context (hyperparameters, distributed info, wrapping).
    """

    def __init__(self, context: PyTorchTrialContext) -> None:
        self.context = context

    @abc.abstractmethod
    def build_training_data_loader(self) -> DataLoader[Any]:
        """The training loader (per-slot batch size: ``context.get_per_slot_batch_size()``).

        The trainer owns shuffling (a fresh, seeded order each epoch), sharding across ranks
        and the position inside the epoch, so a paused trial resumes at the exact batch.
        """

    @abc.abstractmethod
    def build_validation_data_loader(self) -> DataLoader[Any]:
        """The validation loader (sharded across ranks by the trainer)."""

    @abc.abstractmethod
    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> TrainResult:
        """Train on one batch: forward, ``context.backward(loss)``,
        ``context.step_optimizer(optimizer)``.

        Args:
            batch: the batch, already moved to ``context.device``.
            epoch_idx: the data-loader epoch (0-based).
            batch_idx: the global batch index since the trial started (0-based).

        Returns:
            The loss, or a dict of metrics to average over the reporting period.
        """

    def evaluate_batch(self, batch: Any, batch_idx: int) -> Mapping[str, Any]:
        """Metrics of one validation batch; the trainer averages them, weighted by
        :meth:`get_batch_length`. Override this or :meth:`evaluate_full_dataset`."""
        raise NotImplementedError(
            f"{type(self).__name__} must override evaluate_batch() or evaluate_full_dataset()"
        )

    def evaluate_full_dataset(self, data_loader: DataLoader[Any]) -> Mapping[str, Any] | None:
        """Override to compute validation metrics yourself (run on the chief only, over the whole
        validation set). Return None (the default) to use :meth:`evaluate_batch`."""
        return None

    def get_batch_length(self, batch: Any) -> int:
        """How many records a batch holds (default: the first tensor's first dimension)."""
        first = batch
        while isinstance(first, (list, tuple)) and first:
            first = first[0]
        if isinstance(first, Mapping) and first:
            first = next(iter(first.values()))
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            return int(first.shape[0])
        raise TypeError(
            f"cannot tell the length of a {type(batch).__name__} batch: "
            f"override {type(self).__name__}.get_batch_length()"
        )

    def state_dict(self) -> dict[str, Any]:
        """Extra state of the trial itself to checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (default: nothing to restore)."""
        del state
