"""PyTorch Lightning on the platform: a logger, a callback, and a ``fit`` that follows the searcher.

Needs ``lightning`` (``pip install 'lightning>=2.4,<3'``); ``import core_api`` alone never imports
it (nor torch). Three pieces, usable separately:

* :class:`CoreApiLogger`: a Lightning logger; everything ``self.log(...)`` records goes to the
  master (keys starting with ``val``/``validation`` as validation metrics, the rest as training
  metrics), batched and non-blocking like every Core API report.
* :class:`CoreApiCallback`: stores a Lightning checkpoint (``model.ckpt``) after each validation
  and at the end of training, and on preemption (pause, cancel, searcher stop) stores one and
  stops the trainer.
* :func:`fit`: trains one Lightning ``Trainer`` per searcher operation (``max_steps`` for a
  length in batches, ``max_epochs`` for epochs), resuming from the trial's latest checkpoint, and
  reports the searcher metric after each; a promoted trial (ASHA) simply continues.

Single-process training only; for multi-rank training use the Core API directly (see
``examples/core_api/5_distributed.py``).
"""

from __future__ import annotations

import logging
import pathlib
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "core_api.lightning needs PyTorch Lightning: pip install 'lightning>=2.4,<3'"
    ) from exc

from core_api._context import Context
from core_api._train import VALIDATION

logger = logging.getLogger(__name__)

#: The checkpoint file inside each stored checkpoint directory.
CHECKPOINT_FILE = "model.ckpt"
_VALIDATION_PREFIXES = ("val_", "val/", "val.", "validation_", "validation/", "validation.")


def _is_validation(name: str, prefixes: Sequence[str]) -> bool:
    return name in ("val", "validation") or name.startswith(tuple(prefixes))


class CoreApiLogger(Logger):  # type: ignore[misc, unused-ignore]  # Any without lightning
    """A Lightning logger that reports to the master through ``ctx.train``.

    Args:
        ctx: the Core API context.
        validation_prefixes: metric names starting with one of these are validation metrics.
    """

    def __init__(
        self, ctx: Context, *, validation_prefixes: Sequence[str] = _VALIDATION_PREFIXES
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._prefixes = tuple(validation_prefixes)
        # Set by CoreApiCallback: report at trainer.global_step (optimizer steps completed,
        # the same count checkpoints carry) rather than Lightning's logging step.
        self.trainer: pl.Trainer | None = None

    @property
    def name(self) -> str:
        """The logger's name."""
        return "core_api"

    @property
    def version(self) -> str:
        """The trial id (or ``"local"`` off-cluster)."""
        info = self._ctx.info
        return str(info.trial.trial_id) if info is not None else "local"

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kw: Any) -> None:
        """Hyperparameters come from the experiment config; nothing to send."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Report ``metrics``, split into training and validation groups.

        The step is the trainer's ``global_step`` when a :class:`CoreApiCallback` is attached,
        else Lightning's ``step`` argument.
        """
        if self.trainer is not None:
            steps = int(self.trainer.global_step)
        else:
            steps = int(step) if step is not None else 0
        training: dict[str, float] = {}
        validation: dict[str, float] = {}
        for name, value in metrics.items():
            if name == "epoch":
                continue
            (validation if _is_validation(name, self._prefixes) else training)[name] = value
        if training:
            self._ctx.train.report_training_metrics(steps, training)
        if validation:
            self._ctx.train.report_metrics(VALIDATION, steps, validation)


class CoreApiCallback(pl.Callback):  # type: ignore[misc, unused-ignore]
    """Checkpoints into the platform's storage and honours preemption.

    Args:
        ctx: the Core API context.
        checkpoint_on_validation: store a checkpoint after every validation.
        save_on_train_end: store a checkpoint when training ends (if none at that step yet).

    Attributes:
        preempted: the master asked the trial to stop; a checkpoint was stored and the trainer
            stopped.
        last_checkpoint: storage id of the latest checkpoint this callback stored.
        last_validation_step: ``global_step`` of the latest (non-sanity) validation.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        checkpoint_on_validation: bool = True,
        save_on_train_end: bool = True,
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._checkpoint_on_validation = checkpoint_on_validation
        self._save_on_train_end = save_on_train_end
        self.preempted = False
        self.last_checkpoint: str | None = None
        self._last_saved_step: int | None = None
        self.last_validation_step: int | None = None

    def save(self, trainer: pl.Trainer) -> str | None:
        """Store ``trainer``'s state as a checkpoint (once per step); returns its storage id."""
        steps = int(trainer.global_step)
        if steps == self._last_saved_step:
            return self.last_checkpoint
        metadata = {
            "steps_completed": steps,
            "epoch": int(trainer.current_epoch),
            "framework": "lightning",
        }
        if not self._ctx.distributed.is_chief:
            return None
        with self._ctx.checkpoint.store_path(metadata) as (path, storage_id):
            trainer.save_checkpoint(pathlib.Path(path) / CHECKPOINT_FILE)
        self._last_saved_step = steps
        self.last_checkpoint = storage_id
        return storage_id

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Let this trainer's :class:`CoreApiLogger` report at ``global_step``."""
        for lg in trainer.loggers:
            if isinstance(lg, CoreApiLogger):
                lg.trainer = trainer

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Check for preemption after every batch (cheap: a cached flag)."""
        if not self.preempted and self._ctx.preempt.should_preempt():
            logger.info("preempted at step %d: checkpointing and stopping", trainer.global_step)
            self.preempted = True
            self.save(trainer)
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember the validation step and store a checkpoint."""
        if trainer.sanity_checking:
            return
        self.last_validation_step = int(trainer.global_step)
        if self._checkpoint_on_validation and trainer.state.fn == "fit":
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Store a final checkpoint."""
        if self._save_on_train_end and not self.preempted:
            self.save(trainer)


def fit(
    ctx: Context,
    model: pl.LightningModule,
    *,
    searcher_metric: str,
    trainer_kwargs: Mapping[str, Any] | None = None,
    latest_checkpoint: str | None = None,
    **fit_kwargs: Any,
) -> pl.Trainer | None:
    """Train ``model`` through the trial's searcher operations.

    For each operation a ``Trainer`` trains to the op's absolute length (``max_steps`` for
    batches, ``max_epochs`` for epochs), resuming from the latest checkpoint; the model is
    validated at the end if it was not at that step, a checkpoint is stored, and
    ``searcher_metric`` (from ``trainer.callback_metrics``) is reported. Preemption stores a
    checkpoint and returns early; the next run resumes from it.

    Args:
        ctx: the Core API context.
        model: the LightningModule.
        searcher_metric: the logged metric the searcher optimizes (e.g. ``"val_loss"``).
        trainer_kwargs: extra ``pl.Trainer`` arguments (``logger``, ``max_steps`` and
            ``max_epochs`` are set here; ``callbacks`` are added to).
        latest_checkpoint: storage id to resume from (default: the cluster info's).
        **fit_kwargs: passed to ``trainer.fit`` (``datamodule``, ``train_dataloaders``,
            ``val_dataloaders``).

    Returns:
        The last trainer (None if the searcher had no operation).

    Raises:
        KeyError: ``searcher_metric`` was never logged.
        ValueError: an operation is in ``records``, which Lightning cannot count.
    """
    if latest_checkpoint is None and ctx.info is not None:
        latest_checkpoint = ctx.info.latest_checkpoint
    extra = dict(trainer_kwargs or {})
    user_callbacks = list(extra.pop("callbacks", None) or [])
    extra.setdefault("enable_progress_bar", False)
    extra.setdefault("enable_model_summary", False)
    extra["enable_checkpointing"] = False
    trainer: pl.Trainer | None = None
    for op in ctx.searcher.operations():
        if op.unit == "batches":
            limits: dict[str, Any] = {"max_steps": op.length, "max_epochs": -1}
        elif op.unit == "epochs":
            limits = {"max_epochs": op.length, "max_steps": -1}
        else:
            raise ValueError(
                f"core_api.lightning.fit: searcher lengths in {op.unit!r} are not supported "
                "(use batches or epochs)"
            )
        callback = CoreApiCallback(ctx, save_on_train_end=False)
        trainer = pl.Trainer(
            logger=CoreApiLogger(ctx), callbacks=[callback, *user_callbacks], **limits, **extra
        )
        if latest_checkpoint is not None:
            with ctx.checkpoint.restore_path(latest_checkpoint) as path:
                trainer.fit(
                    model, ckpt_path=str(pathlib.Path(path) / CHECKPOINT_FILE), **fit_kwargs
                )
        else:
            trainer.fit(model, **fit_kwargs)
        if callback.preempted:
            return trainer
        if callback.last_validation_step != trainer.global_step and is_overridden(
            "validation_step", model
        ):
            val_kwargs = {
                k: fit_kwargs[k] for k in ("datamodule",) if fit_kwargs.get(k) is not None
            }
            if fit_kwargs.get("val_dataloaders") is not None:
                val_kwargs["dataloaders"] = fit_kwargs["val_dataloaders"]
            trainer.validate(model, verbose=False, **val_kwargs)
        latest_checkpoint = callback.save(trainer) or latest_checkpoint
        if searcher_metric not in trainer.callback_metrics:
            raise KeyError(
                f"searcher metric {searcher_metric!r} was never logged; logged: "
                f"{sorted(trainer.callback_metrics)}"
            )
        op.report_completed(float(trainer.callback_metrics[searcher_metric]))
    return trainer
