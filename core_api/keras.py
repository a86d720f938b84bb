"""Keras 3 on the platform: :class:`DeterminedCallback` for ``model.fit``.

Needs Keras 3 (``pip install 'determined-sdk[keras]'``); written for the torch backend
(``KERAS_BACKEND=torch``, the default this module sets when nothing chose a backend before it
is imported). ``import core_api`` alone never imports Keras.

.. code-block:: python

    with core_api.init() as ctx:
        model = build_and_compile()
        callback = DeterminedCallback(ctx)
        model.fit(
            x, y, validation_data=(xv, yv),
            epochs=callback.epochs(default=10),          # on-cluster: the searcher's length
            initial_epoch=callback.restore(model),     # resume weights + optimizer
            callbacks=[callback],
        )

What it does:

* metrics: every epoch's logs (``val_*`` as validation metrics, the rest as training metrics)
  at the number of batches trained so far, plus training logs every ``batch_report_period``
  batches if asked;
* checkpoints (``state.npz``: the model's variables and the optimizer's, with the epoch and
  batch counts in the metadata) every ``checkpoint_epochs`` epochs (default: the config's
  ``min_checkpoint_period`` in epochs, else every epoch), at the end of each searcher operation,
  on preemption and at the end of training; :meth:`DeterminedCallback.restore` loads the
  trial's latest one and returns the epoch to start from;
* searcher operations in epochs: an operation completes at the end of the epoch that reaches its
  length, with ``searcher.metric`` from that epoch's logs; when the searcher is done (or stops
  the trial early: patience, target) training stops;
* preemption (pause, cancel, searcher stop) is honoured at the end of an epoch: a checkpoint
  is stored and ``model.stop_training`` is set.

Single process only; for several ranks use the Core API or ``core_api.pytorch``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

try:
    import keras
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("core_api.keras needs Keras 3: pip install 'keras>=3,<4'") from exc

import numpy as np

from core_api._context import Context
from core_api._train import VALIDATION

logger = logging.getLogger(__name__)

#: The file holding the model's and the optimizer's variables in each checkpoint.
STATE_FILE = "state.npz"
_VALIDATION_PREFIX = "val_"


def _to_numpy(var: Any) -> np.ndarray[Any, Any]:
    """A variable's value as a numpy array (directly from the torch tensor on that backend)."""
    value = getattr(var, "value", var)
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(keras.ops.convert_to_numpy(value))


def _numbers(logs: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (logs or {}).items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            continue  # Keras may log non-scalars (e.g. a learning-rate schedule object)
    return out


class DeterminedCallback(keras.callbacks.Callback):  # type: ignore[misc, unused-ignore]
    """Report metrics, store checkpoints and follow the searcher from ``model.fit``.

    Args:
        ctx: the Core API context.
        checkpoint_epochs: store a checkpoint every this many epochs (None: the config's
            ``min_checkpoint_period`` in epochs, else 1; 0: only at op ends, preemption and
            the end of training).
        batch_report_period: also report training logs every this many batches (0: per
            epoch only).
        searcher_metric: the logged metric the searcher optimizes (default: the config's
            ``searcher.metric``).

    Attributes:
        preempted: the master asked the trial to stop; a checkpoint was stored.
        last_checkpoint: storage id of the latest checkpoint this callback stored.
        batches_trained: batches trained since the trial started (across resumes).
    """

    def __init__(
        self,
        ctx: Context,
        *,
        checkpoint_epochs: int | None = None,
        batch_report_period: int = 0,
        searcher_metric: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("checkpoint_epochs", checkpoint_epochs),
            ("batch_report_period", batch_report_period),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self._ctx = ctx
        config = ctx.info.trial.config if ctx.info is not None else {}
        self._config = config
        self._metric = searcher_metric or (config.get("searcher") or {}).get("metric")
        if checkpoint_epochs is None:
            mcp = config.get("min_checkpoint_period") or {}
            checkpoint_epochs = int(mcp["value"]) if mcp.get("unit") == "epochs" else 1
        self._checkpoint_epochs = checkpoint_epochs
        self._batch_report_period = batch_report_period
        self._ops: Iterator[Any] | None = None
        self._op: Any = None
        self._epochs_done = 0
        self._saved_at: int | None = None
        self.preempted = False
        self.last_checkpoint: str | None = None
        self.batches_trained = 0
        self._warned_steps = False
        if batch_report_period:
            # An instance attribute: Keras keeps its fast asynchronous batch loop unless a
            # callback overrides a batch hook, so the hook exists only when asked for.
            self.on_train_batch_end = self._on_batch

    # -- before fit ---------------------------------------------------------------------------
    def epochs(self, default: int) -> int:
        """The ``epochs`` to pass to ``model.fit``: on-cluster the searcher's ``max_length`` in
        epochs (operations may end training sooner), else ``default``.

        Raises:
            ValueError: the searcher's length is not in epochs.
        """
        raw = (self._config.get("searcher") or {}).get("max_length")
        if self._ctx.mode != "cluster" or not raw:
            return int(default)
        unit = raw.get("unit") if isinstance(raw, Mapping) else None
        if unit != "epochs":
            raise ValueError(
                f"searcher.max_length: core_api.keras needs a length in epochs, got {raw!r}"
            )
        return int(raw["value"])

    def restore(self, model: keras.Model, storage_id: str | None = None) -> int:
        """Load a checkpoint (default: the trial's latest, on-cluster) into ``model`` and its
        optimizer.

        Args:
            model: the compiled model.
            storage_id: the checkpoint to load.

        Returns:
            The epoch to pass as ``initial_epoch`` (0 when there is nothing to resume).

        Raises:
            ValueError: the checkpoint does not fit the model.
        """
        if storage_id is None:
            storage_id = self._ctx.info.latest_checkpoint if self._ctx.info is not None else None
        if storage_id is None:
            return 0
        with self._ctx.checkpoint.restore_path(storage_id) as path:
            if not (path / STATE_FILE).is_file():
                raise ValueError(f"checkpoint {storage_id} has no {STATE_FILE}")
            with np.load(path / STATE_FILE) as data:
                arrays = {k: data[k] for k in data.files}
        metadata = self._ctx.checkpoint.get_metadata(storage_id)
        model_vars = [arrays[f"model_{i}"] for i in range(int(arrays["n_model"]))]
        opt_vars = [arrays[f"opt_{i}"] for i in range(int(arrays["n_opt"]))]
        if len(model_vars) != len(model.variables):
            raise ValueError(
                f"checkpoint {storage_id} holds {len(model_vars)} model variables; the model has "
                f"{len(model.variables)}"
            )
        for var, value in zip(model.variables, model_vars, strict=True):
            var.assign(value)
        optimizer = model.optimizer
        if optimizer is not None and opt_vars:
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            if len(opt_vars) != len(optimizer.variables):
                raise ValueError(
                    f"checkpoint {storage_id} holds {len(opt_vars)} optimizer variables; the "
                    f"optimizer has {len(optimizer.variables)}"
                )
            for var, value in zip(optimizer.variables, opt_vars, strict=True):
                var.assign(value)
        self._epochs_done = int(metadata.get("epochs_completed", 0))
        self.batches_trained = int(metadata.get("steps_completed", 0))
        self._saved_at = self._epochs_done
        logger.info(
            "resumed from checkpoint %s at epoch %d (%d batches)",
            storage_id,
            self._epochs_done,
            self.batches_trained,
        )
        print(f"resumed from checkpoint {storage_id} at epoch {self._epochs_done}", flush=True)
        return self._epochs_done

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> str | None:
        """Store the model's and the optimizer's variables (once per epoch count)."""
        if self._saved_at == self._epochs_done:
            return self.last_checkpoint
        model = self.model
        arrays: dict[str, Any] = {}
        for i, var in enumerate(model.variables):
            arrays[f"model_{i}"] = _to_numpy(var)
        opt_vars = list(model.optimizer.variables) if model.optimizer is not None else []
        for i, var in enumerate(opt_vars):
            arrays[f"opt_{i}"] = _to_numpy(var)
        arrays["n_model"] = np.asarray(len(model.variables))
        arrays["n_opt"] = np.asarray(len(opt_vars))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        metadata = {
            "steps_completed": self.batches_trained,
            "epochs_completed": self._epochs_done,
            "framework": "keras",
            "keras_version": keras.__version__,
        }
        with self._ctx.checkpoint.store_path(metadata) as (path, storage_id):
            (path / STATE_FILE).write_bytes(buf.getvalue())
        self._saved_at = self._epochs_done
        self.last_checkpoint = storage_id
        return storage_id

    # -- Keras hooks ---------------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """On-cluster, fetch the searcher's current operation."""
        if self._ctx.mode == "cluster" and self._ops is None:
            self._ops = iter(self._ctx.searcher.operations())
            self._next_op()

    def _next_op(self) -> None:
        assert self._ops is not None
        self._op = next(self._ops, None)
        if self._op is None:
            if self.model is not None:
                self.model.stop_training = True
        elif self._op.unit != "epochs":
            raise ValueError(
                f"core_api.keras: searcher lengths in {self._op.unit!r} are not supported "
                "(use epochs)"
            )

    def _on_batch(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Per-batch reporting (installed only when ``batch_report_period`` > 0: any batch hook
        makes Keras synchronize every batch)."""
        self.batches_trained += 1
        if self.batches_trained % self._batch_report_period == 0:
            values = _numbers(logs)
            if values:
                self._ctx.train.report_training_metrics(self.batches_trained, values)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Report the epoch's metrics; complete due operations; checkpoint; honour preemption."""
        self._epochs_done = epoch + 1
        if not self._batch_report_period:
            steps = (self.params or {}).get("steps")
            if steps is None:
                if not self._warned_steps:
                    logger.warning(
                        "Keras does not know the steps per epoch: steps_completed counts epochs "
                        "(set steps_per_epoch, or batch_report_period to count batches)"
                    )
                    self._warned_steps = True
                steps = 1
            self.batches_trained += int(steps)
        values = _numbers(logs)
        training = {k: v for k, v in values.items() if not k.startswith(_VALIDATION_PREFIX)}
        validation = {k: v for k, v in values.items() if k.startswith(_VALIDATION_PREFIX)}
        train = self._ctx.train
        if training:
            train.report_training_metrics(self.batches_trained, training)
        if validation:
            train.report_metrics(VALIDATION, self.batches_trained, validation)
        if self._op is not None:
            self._op.report_progress(self._epochs_done)
        while self._op is not None and self._epochs_done >= self._op.length:
            value = self._searcher_value(values)
            self.save()
            self._op.report_completed(value)
            self._next_op()
        every = self._checkpoint_epochs
        if every and self._epochs_done % every == 0:
            self.save()
        if self._ctx.preempt.should_preempt():
            logger.info("preempted after epoch %d: checkpointing and stopping", self._epochs_done)
            self.preempted = True
            self.save()
            self.model.stop_training = True

    def _searcher_value(self, values: Mapping[str, float]) -> float:
        name = self._metric
        if name is None:
            raise ValueError(
                "core_api.keras: no searcher metric (set searcher.metric in the config or pass "
                "searcher_metric=)"
            )
        if name not in values:
            raise KeyError(f"searcher metric {name!r} is not in the epoch's logs {sorted(values)}")
        return values[name]

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Store a final checkpoint."""
        if not self.preempted and self._epochs_done:
            self.save()
