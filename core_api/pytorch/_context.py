""":class:`PyTorchTrialContext` and :func:`init`: what a :class:`PyTorchTrial` is built with.

The context owns the Core API context, the device, and every model, optimizer and LR
scheduler the trial wrapped (the trainer checkpoints and restores exactly those). With more
than one rank ``wrap_model`` returns a ``DistributedDataParallel`` model.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

import core_api
from core_api._context import Context
from core_api._distributed import DistributedContext

logger = logging.getLogger(__name__)


class StepMode(enum.Enum):
    """When the trainer steps a wrapped LR scheduler."""

    STEP_EVERY_EPOCH = "STEP_EVERY_EPOCH"
    STEP_EVERY_BATCH = "STEP_EVERY_BATCH"
    MANUAL_STEP = "MANUAL_STEP"


_Mode = StepMode


class LRScheduler:
    """A wrapped LR scheduler (``context.wrap_lr_scheduler``) and when it is stepped."""

    StepMode = StepMode  # Determined's spelling: LRScheduler.StepMode.STEP_EVERY_BATCH

    def __init__(self, scheduler: Any, step_mode: _Mode) -> None:
        self.scheduler = scheduler
        self.step_mode = step_mode

    def step(self) -> None:
        """Step the scheduler (for ``MANUAL_STEP``)."""
        self.scheduler.step()

    def get_last_lr(self) -> list[float]:
        """The scheduler's last learning rates."""
        return list(self.scheduler.get_last_lr())

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state."""
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the scheduler's state."""
        self.scheduler.load_state_dict(state)


class PyTorchTrialContext:
    """Hyperparameters, ranks and wrapping for a :class:`~core_api.pytorch.PyTorchTrial`.

    Build it with :func:`core_api.pytorch.init`.

    Args:
        core: the Core API context.
        hparams: the trial's hyperparameters (on-cluster: the trial's own).
        seed: the trial's seed (the trainer seeds python, numpy and torch with it).

    Attributes:
        core: the Core API context (``train``, ``checkpoint``, ``searcher``, ``preempt``, ...).
        distributed: the ranks' context.
        device: where wrapped models live and batches are moved to.
    """

    def __init__(self, core: Context, *, hparams: Mapping[str, Any], seed: int = 0) -> None:
        self.core = core
        self.distributed: DistributedContext = core.distributed
        self._hparams = dict(hparams)
        self._seed = int(seed)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.distributed.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.models: list[nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_schedulers: list[LRScheduler] = []
        self._batch_idx = 0
        self._epoch_idx = 0
        self._epoch_len = 0

    # -- what the trial is ------------------------------------------------------------------
    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters."""
        return self._hparams

    def get_hparams(self) -> dict[str, Any]:
        """The hyperparameters."""
        return self._hparams

    def get_hparam(self, name: str) -> Any:
        """One hyperparameter.

        Raises:
            KeyError: no such hyperparameter (the message lists the known names).
        """
        if name not in self._hparams:
            raise KeyError(
                f"hyperparameter {name!r} not found; the trial has {sorted(self._hparams)}"
            )
        return self._hparams[name]

    def get_trial_seed(self) -> int:
        """The trial's seed."""
        return self._seed

    def get_experiment_config(self) -> dict[str, Any]:
        """The experiment's config (``{}`` off-cluster)."""
        info = self.core.info
        return dict(info.trial.config) if info is not None else {}

    def get_data_config(self) -> dict[str, Any]:
        """The config's ``data`` section."""
        return dict(self.get_experiment_config().get("data") or {})

    def get_trial_id(self) -> int:
        """The trial's id (0 off-cluster)."""
        info = self.core.info
        return info.trial.trial_id if info is not None else 0

    def get_experiment_id(self) -> int:
        """The experiment's id (0 off-cluster)."""
        info = self.core.info
        return info.trial.experiment_id if info is not None else 0

    def get_global_batch_size(self) -> int:
        """``hparams["global_batch_size"]``.

        Raises:
            KeyError: the hyperparameter is not set.
        """
        if "global_batch_size" not in self._hparams:
            raise KeyError(
                "hyperparameter 'global_batch_size' is not set; add it to the config's "
                "hyperparameters (or to init(hparams=...)) to use get_global_batch_size()"
            )
        return int(self._hparams["global_batch_size"])

    def get_per_slot_batch_size(self) -> int:
        """The global batch size divided by the number of ranks.

        Raises:
            ValueError: it does not divide evenly.
        """
        total, size = self.get_global_batch_size(), self.distributed.size
        if total % size:
            raise ValueError(
                f"hyperparameter global_batch_size={total} is not divisible by the "
                f"{size} slots of this trial"
            )
        return total // size

    # -- position (kept up to date by the trainer) ----------------------------------------
    def current_train_batch(self) -> int:
        """Batches trained so far (the global step)."""
        return self._batch_idx

    def current_train_epoch(self) -> int:
        """The data-loader epoch being trained."""
        return self._epoch_idx

    def is_epoch_start(self) -> bool:
        """Whether the current batch is the first of its epoch."""
        return self._epoch_len > 0 and self._batch_idx % self._epoch_len == 0

    def is_epoch_end(self) -> bool:
        """Whether the current batch is the last of its epoch."""
        return self._epoch_len > 0 and (self._batch_idx + 1) % self._epoch_len == 0

    # -- wrapping ----------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device; with several ranks wrap it in
        ``DistributedDataParallel``. Checkpointed and restored by the trainer."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"wrap_model() takes a torch.nn.Module, got {type(model).__name__}")
        model = model.to(self.device)
        self.models.append(model)
        if self.distributed.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        return model

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Register ``optimizer`` for checkpointing; returns it unchanged."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"wrap_optimizer() takes a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizers.append(optimizer)
        return optimizer

    def wrap_lr_scheduler(
        self, lr_scheduler: Any, step_mode: StepMode = StepMode.STEP_EVERY_EPOCH
    ) -> LRScheduler:
        """Register an LR scheduler; the trainer steps it every batch or epoch (``step_mode``)
        and checkpoints it."""
        if not isinstance(step_mode, StepMode):
            step_mode = StepMode(step_mode)
        if not (hasattr(lr_scheduler, "step") and hasattr(lr_scheduler, "state_dict")):
            raise TypeError(
                f"wrap_lr_scheduler() takes a torch LR scheduler, got {type(lr_scheduler).__name__}"
            )
        wrapped = LRScheduler(lr_scheduler, step_mode)
        self.lr_schedulers.append(wrapped)
        return wrapped

    # -- inside train_batch --------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()`` (DDP averages the gradients across ranks)."""
        loss.backward(**kwargs)  # type: ignore[no-untyped-call]

    def step_optimizer(self, optimizer: torch.optim.Optimizer, *, clip_grads: Any = None) -> None:
        """Step ``optimizer`` and zero its gradients.

        Args:
            optimizer: a wrapped optimizer.
            clip_grads: optional ``fn(params)`` called before the step (e.g. to clip norms).
        """
        if clip_grads is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            clip_grads(params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def to_device(self, data: Any) -> Any:
        """Move tensors (nested in lists, tuples and dicts) to :attr:`device`."""
        if isinstance(data, torch.Tensor):
            return data.to(self.device, non_blocking=True) if self.device.type != "cpu" else data
        if isinstance(data, Mapping):
            return {k: self.to_device(v) for k, v in data.items()}
        if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
            return type(data)(*(self.to_device(v) for v in data))
        if isinstance(data, (list, tuple)):
            return type(data)(self.to_device(v) for v in data)
        return data


def _seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, so the trial builds the same model on every rank and every
    run."""
    import random

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy ships with our torch
        pass
    torch.manual_seed(seed)


def _distributed_from_env() -> tuple[DistributedContext | None, bool]:
    """A torch.distributed context when launched with several ranks (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, False
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    return DistributedContext.from_torch_distributed(), started


@contextlib.contextmanager
def init(
    *,
    hparams: Mapping[str, Any] | None = None,
    distributed: DistributedContext | None = None,
    checkpoint_storage: Any = None,
    master: str | None = None,
    experiment_name: str | None = None,
    seed: int | None = None,
) -> Iterator[PyTorchTrialContext]:
    """Build a :class:`PyTorchTrialContext` (and the Core API context under it).

    On-cluster the trial's hyperparameters and seed are used; off-cluster (or unmanaged, with a
    master address) ``hparams`` are. When launched with several ranks (``WORLD_SIZE`` > 1, as
    the master's launcher and torchrun do) ``torch.distributed`` is initialized (NCCL on GPUs,
    else gloo) unless it already is, and torn down on exit.

    Args:
        hparams: hyperparameters off-cluster (ignored on-cluster).
        distributed: the ranks' context; default: from the environment.
        checkpoint_storage: see :func:`core_api.init`.
        master: see :func:`core_api.init`.
        experiment_name: see :func:`core_api.init`.
        seed: the trial seed off-cluster (default 0).

    Yields:
        The context; build your trial with it and pass both to :class:`Trainer`.
    """
    started = False
    if distributed is None:
        distributed, started = _distributed_from_env()
    try:
        kwargs: dict[str, Any] = {"distributed": distributed, "hparams": hparams}
        if checkpoint_storage is not None:
            kwargs["checkpoint_storage"] = checkpoint_storage
        if master is not None:
            kwargs["master"] = master
        if experiment_name is not None:
            kwargs["experiment_name"] = experiment_name
        with core_api.init(**kwargs) as core:
            info = core.info
            if core.mode == "cluster" and info is not None:
                hp: Mapping[str, Any] = info.trial.hparams
                trial_seed = info.trial.trial_seed
            else:
                hp = (info.trial.hparams if info is not None else None) or hparams or {}
                trial_seed = 0 if seed is None else seed
            _seed_everything(trial_seed)
            yield PyTorchTrialContext(core, hparams=hp, seed=trial_seed)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
