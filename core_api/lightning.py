"""PyTorch Lightning on the platform.

Needs ``lightning`` (``pip install 'lightning>=2.4,<3'``); ``import core_api`` alone never imports
it (nor torch).

The Lightning-habits way (recommended): build your own ``pl.Trainer`` and add

* :class:`DeterminedLogger` to its loggers (next to your CSV/TensorBoard/... loggers): metrics
  to the master, ``save_hyperparameters()`` kept, metrics echoed to the trial log at a bounded
  rate;
* :class:`DeterminedCallback` to its callbacks (next to your ``ModelCheckpoint``...): searcher
  operations, checkpoints every ``checkpoint_period`` / ``min_checkpoint_period``, at op ends,
  at the end and on preemption, and pausing at a batch or at an epoch's end;
* resume with ``trainer.fit(..., ckpt_path=latest_checkpoint_path(ctx))``.

The older pieces, still supported:

* :class:`CoreApiLogger`: a Lightning logger; everything ``self.log(...)`` records goes to the
  master (keys starting with ``val``/``validation`` as validation metrics, the rest as training
  metrics), batched and non-blocking like every Core API report.
* :class:`CoreApiCallback`: stores a Lightning checkpoint (``model.ckpt``) after each validation
  and at the end of training, and on preemption (pause, cancel, searcher stop) stores one and
  stops the trainer.
* :func:`fit`: trains one Lightning ``Trainer`` per searcher operation (``max_steps`` for a
  length in batches, ``max_epochs`` for epochs), resuming from the trial's latest checkpoint, and
  reports the searcher metric after each; a promoted trial (ASHA) simply continues.

Single-process training only; for multi-rank training use ``core_api.pytorch`` or the Core API
directly (see ``examples/core_api/5_distributed.py``).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from argparse import Namespace
from collections.abc import Iterator, Mapping, Sequence
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
        trainer_kwargs: extra ``pl.Trainer`` arguments (``max_steps`` and ``max_epochs`` are
            set here from the searcher; ``logger`` and ``callbacks`` are added to).
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
    limits_given = sorted(k for k in ("max_steps", "max_epochs") if k in extra)
    if limits_given:
        raise ValueError(
            f"core_api.lightning.fit sets {', '.join(limits_given)} from the searcher; to keep "
            "your own limits build your own Trainer with DeterminedLogger + DeterminedCallback"
        )
    user_callbacks = list(extra.pop("callbacks", None) or [])
    user_loggers = extra.pop("logger", None)
    if user_loggers is None or isinstance(user_loggers, bool):
        user_loggers = []
    elif not isinstance(user_loggers, (list, tuple)):
        user_loggers = [user_loggers]
    extra.setdefault("enable_progress_bar", False)
    extra.setdefault("enable_model_summary", False)
    # The platform stores its own checkpoints; Lightning's default one is off unless the user
    # brought a ModelCheckpoint of their own.
    if not any(isinstance(cb, pl.callbacks.ModelCheckpoint) for cb in user_callbacks):
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
            logger=[CoreApiLogger(ctx), *user_loggers],
            callbacks=[callback, *user_callbacks],
            **limits,
            **extra,
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


# -- the Lightning-habits integration: a logger and a callback for the user's own Trainer -------

#: Lines echoed to the trial log go through Lightning's own logger hierarchy, so they appear
#: wherever Lightning's messages do (Lightning sets up a console handler for it).
_echo = logging.getLogger("lightning.pytorch.core_api")


def _json_safe(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)] = value
        elif isinstance(value, Mapping):
            out[str(key)] = _json_safe(value)
        elif isinstance(value, (list, tuple)):
            out[str(key)] = [
                v if isinstance(v, (str, int, float, bool)) or v is None else repr(v) for v in value
            ]
        else:
            out[str(key)] = repr(value)
    return out


class DeterminedLogger(Logger):  # type: ignore[misc, unused-ignore]  # Any without lightning
    """A Lightning logger for the platform, used next to the user's other loggers.

    ``pl.Trainer(logger=[CSVLogger(...), DeterminedLogger(ctx)], ...)``: everything
    ``self.log(...)`` records is reported to the master (names starting with ``val``/
    ``validation`` as validation metrics) at ``trainer.global_step``; hyperparameters from
    ``save_hyperparameters()`` are kept (and recorded in every checkpoint's metadata by
    :class:`DeterminedCallback`); metrics are echoed to the trial log, validation ones every
    time and training ones at most every ``echo_interval`` seconds.

    Args:
        ctx: the Core API context.
        validation_prefixes: metric names starting with one of these are validation metrics.
        echo_interval: seconds between echoed training-metric lines (0: every report; None:
            never).
    """

    def __init__(
        self,
        ctx: Context,
        *,
        validation_prefixes: Sequence[str] = _VALIDATION_PREFIXES,
        echo_interval: float | None = 10.0,
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._prefixes = tuple(validation_prefixes)
        self._echo_interval = echo_interval
        self._last_echo = float("-inf")
        #: The hyperparameters Lightning logged (``save_hyperparameters()``), JSON-safe.
        self.hyperparameters: dict[str, Any] = {}
        self.trainer: pl.Trainer | None = None

    @property
    def name(self) -> str:
        """The logger's name."""
        return "determined"

    @property
    def version(self) -> str:
        """The trial id (or ``"local"`` off-cluster)."""
        info = self._ctx.info
        return str(info.trial.trial_id) if info is not None else "local"

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kw: Any) -> None:
        """Keep the module's hyperparameters (``save_hyperparameters()``) and echo them once."""
        if isinstance(params, Namespace):
            params = vars(params)
        self.hyperparameters.update(_json_safe(dict(params)))
        if self.hyperparameters and self._ctx.distributed.is_chief:
            _echo.info("hyperparameters: %s", json.dumps(self.hyperparameters, sort_keys=True))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Report ``metrics``, split into training and validation groups."""
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
        if not self._ctx.distributed.is_chief or self._echo_interval is None:
            return
        if validation:
            _echo.info("step %d: validation %s", steps, _fmt(validation))
        now = time.monotonic()
        if training and now - self._last_echo >= self._echo_interval:
            self._last_echo = now
            _echo.info("step %d: training %s", steps, _fmt(training))


def _fmt(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(metrics.items()))


def latest_checkpoint_path(ctx: Context, storage_id: str | None = None) -> str | None:
    """The Lightning checkpoint file to pass as ``trainer.fit(..., ckpt_path=...)``.

    Args:
        ctx: the Core API context.
        storage_id: the checkpoint (default: the trial's latest, on-cluster).

    Returns:
        The path of ``model.ckpt`` inside that checkpoint, or None when there is none (a fresh
        trial).
    """
    if storage_id is None:
        storage_id = ctx.info.latest_checkpoint if ctx.info is not None else None
    if storage_id is None:
        return None
    with ctx.checkpoint.restore_path(storage_id) as path:
        found = pathlib.Path(path) / CHECKPOINT_FILE
    if not found.is_file():
        raise ValueError(f"checkpoint {storage_id} has no {CHECKPOINT_FILE}")
    return str(found)


class DeterminedCallback(pl.Callback):  # type: ignore[misc, unused-ignore]
    """The platform's side of a Lightning ``Trainer`` the user builds themselves.

    Add it with a :class:`DeterminedLogger`; the user's other loggers, callbacks
    (``ModelCheckpoint``, ``EarlyStopping``...) and limits (``max_steps``, ``max_epochs``) keep
    working. It

    * follows the searcher on-cluster: the current operation is completed (with
      ``searcher_metric`` from ``trainer.callback_metrics``) at the first validation at or after
      its length (batches = ``global_step``, epochs = epochs finished), then the next is fetched;
      when the searcher has no more, the trainer stops. Align validations with the lengths
      (``val_check_interval``) for exact rungs. Off-cluster the user's limits alone decide;
    * stores checkpoints (Lightning's own ``model.ckpt`` format, so ``ckpt_path`` resumes them)
      every ``checkpoint_period`` steps (default: the config's ``min_checkpoint_period``), at
      the end of each operation, at the end of training, and on preemption: never forced after
      every validation;
    * checks for preemption after every batch (a cached flag). ``pause_at="batch"`` stores a
      checkpoint and stops at once: Lightning resumes the step count, optimizer and
      schedulers exactly, and the position inside the epoch only if the training loader is
      resumable (``state_dict``/``load_state_dict``, e.g. torchdata's ``StatefulDataLoader``);
      otherwise Lightning warns and re-reads that epoch from its start. ``pause_at="epoch"``
      waits for the epoch's end instead, which resumes exactly with any loader.

    Resume with ``trainer.fit(model, ..., ckpt_path=latest_checkpoint_path(ctx))``.

    Args:
        ctx: the Core API context.
        searcher_metric: the logged metric the searcher optimizes (default: the config's
            ``searcher.metric``).
        checkpoint_period: store a checkpoint every this many steps (None: the config's
            ``min_checkpoint_period`` in batches or epochs, else only at op ends, training end
            and preemption; 0: never periodically).
        pause_at: ``"batch"`` or ``"epoch"`` (see above).

    Attributes:
        preempted: the master asked the trial to stop; a checkpoint was stored.
        last_checkpoint: storage id of the latest checkpoint this callback stored.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        searcher_metric: str | None = None,
        checkpoint_period: int | None = None,
        pause_at: str = "batch",
    ) -> None:
        super().__init__()
        if pause_at not in ("batch", "epoch"):
            raise ValueError(f"pause_at must be 'batch' or 'epoch', got {pause_at!r}")
        if checkpoint_period is not None and (
            isinstance(checkpoint_period, bool)
            or not isinstance(checkpoint_period, int)
            or checkpoint_period < 0
        ):
            raise ValueError(f"checkpoint_period must be an int >= 0, got {checkpoint_period!r}")
        self._ctx = ctx
        config = ctx.info.trial.config if ctx.info is not None else {}
        searcher = config.get("searcher") or {}
        self._metric = searcher_metric or searcher.get("metric")
        self._period_steps = 0
        self._period_epochs = 0
        if checkpoint_period is not None:
            self._period_steps = checkpoint_period
        else:
            mcp = config.get("min_checkpoint_period") or {}
            if mcp.get("unit") == "batches":
                self._period_steps = int(mcp["value"])
            elif mcp.get("unit") == "epochs":
                self._period_epochs = int(mcp["value"])
        self._pause_at = pause_at
        self._ops: Iterator[Any] | None = None
        self._op: Any = None
        self._pause_pending = False
        self.preempted = False
        self.last_checkpoint: str | None = None
        self._last_saved_step: int | None = None
        self._loggers: list[DeterminedLogger] = []

    # -- helpers ---------------------------------------------------------------------------
    def save(self, trainer: pl.Trainer) -> str | None:
        """Store the trainer's state as a checkpoint (once per step; every rank must call it).

        Returns:
            The storage id (also on workers).
        """
        steps = int(trainer.global_step)
        if steps == self._last_saved_step:
            return self.last_checkpoint
        hparams: dict[str, Any] = {}
        for lg in self._loggers:
            hparams.update(lg.hyperparameters)
        metadata = {
            "steps_completed": steps,
            "epoch": int(trainer.current_epoch),
            "framework": "lightning",
            "hparams": hparams,
        }
        with self._ctx.checkpoint.store_path(metadata, shard=True) as (path, storage_id):
            # Every rank calls it (a collective for some strategies); rank 0 writes the file.
            trainer.save_checkpoint(pathlib.Path(path) / CHECKPOINT_FILE)
        self._last_saved_step = steps
        self.last_checkpoint = storage_id
        return storage_id

    def _progress(self, trainer: pl.Trainer, unit: str) -> float:
        if unit == "epochs":
            return float(trainer.current_epoch + int(bool(trainer.is_last_batch)))
        return float(trainer.global_step)

    def _next_op(self, trainer: pl.Trainer) -> None:
        assert self._ops is not None
        self._op = next(self._ops, None)
        if self._op is None:
            trainer.should_stop = True
        elif self._op.unit not in ("batches", "epochs"):
            raise ValueError(
                f"DeterminedCallback: searcher lengths in {self._op.unit!r} are not supported "
                "with Lightning (use batches or epochs)"
            )

    def _complete_due_ops(self, trainer: pl.Trainer) -> None:
        while self._op is not None and self._progress(trainer, self._op.unit) >= self._op.length:
            value = self._searcher_value(trainer)
            self.save(trainer)
            self._op.report_completed(value)
            self._next_op(trainer)

    def _searcher_value(self, trainer: pl.Trainer) -> float:
        name = self._metric
        if name is None:
            raise ValueError(
                "DeterminedCallback: no searcher metric (set searcher.metric in the config or "
                "pass searcher_metric=)"
            )
        if name not in trainer.callback_metrics:
            raise KeyError(
                f"searcher metric {name!r} was never logged; logged: "
                f"{sorted(trainer.callback_metrics)}"
            )
        return float(trainer.callback_metrics[name])

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find this trainer's :class:`DeterminedLogger` (reports at ``global_step``)."""
        self._loggers = [lg for lg in trainer.loggers if isinstance(lg, DeterminedLogger)]
        for lg in self._loggers:
            lg.trainer = trainer
        for other in trainer.loggers:
            if isinstance(other, CoreApiLogger):
                other.trainer = trainer
        if not self._loggers and not any(isinstance(lg, CoreApiLogger) for lg in trainer.loggers):
            logger.warning(
                "DeterminedCallback without a DeterminedLogger: metrics will not reach the master"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """On-cluster, fetch the searcher's current operation."""
        if self._ctx.mode == "cluster":
            self._ops = iter(self._ctx.searcher.operations())
            self._next_op(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Progress, periodic checkpoints and the preemption check."""
        step = int(trainer.global_step)
        if self._op is not None and self._ctx.distributed.is_chief:
            self._op.report_progress(self._progress(trainer, self._op.unit))
        if self._period_steps and step % self._period_steps == 0:
            self.save(trainer)
        if self.preempted or self._pause_pending:
            return
        if self._ctx.preempt.should_preempt():
            if self._pause_at == "epoch" and not trainer.is_last_batch:
                logger.info("preempted at step %d: stopping at the epoch's end", step)
                self._pause_pending = True
                return
            self._stop_for_preemption(trainer)

    def _stop_for_preemption(self, trainer: pl.Trainer) -> None:
        logger.info("preempted at step %d: checkpointing and stopping", trainer.global_step)
        self.preempted = True
        self.save(trainer)
        trainer.should_stop = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A pause waiting for the epoch's end; epoch-period checkpoints."""
        if self._pause_pending and not self.preempted:
            self._stop_for_preemption(trainer)
            return
        if self._period_epochs and (trainer.current_epoch + 1) % self._period_epochs == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Complete every searcher operation this validation reaches."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.preempted:
            return
        self._complete_due_ops(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Store a final checkpoint; say so if the user's limits ended training before the
        searcher's length."""
        if self.preempted:
            return
        self.save(trainer)
        if self._op is not None:
            done = self._progress(trainer, self._op.unit)
            logger.warning(
                "training ended at %s %s, before the searcher's length %d: the operation was "
                "not completed (raise max_steps/max_epochs, or validate at the length)",
                done,
                self._op.unit,
                self._op.length,
            )
