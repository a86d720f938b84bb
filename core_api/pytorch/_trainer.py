"""The :class:`Trainer`: the training loop around a :class:`PyTorchTrial`.

It follows the searcher's operations (on-cluster) or ``max_length`` (off-cluster and unmanaged),
reports training metrics every ``reporting_period`` and validation metrics every
``validation_period`` (default: the config's ``min_validation_period``), checkpoints every
``checkpoint_period`` (default: ``min_checkpoint_period``), after validations as
``checkpoint_policy`` says, at the end and on preemption. It checks for preemption after every
batch, and a checkpoint holds everything needed to continue exactly: the wrapped models,
optimizers and LR schedulers, every rank's RNG states, the position in the data, and the
partly accumulated training metrics. A resumed trial's metrics equal an uninterrupted one's.
"""

from __future__ import annotations

import logging
import math
import pathlib
import pickle
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from core_api.pytorch._context import PyTorchTrialContext, StepMode
from core_api.pytorch._data import EpochLoader
from core_api.pytorch._trial import PyTorchTrial
from core_api.pytorch._units import Batch, TrainUnit, from_config, unit_from

logger = logging.getLogger(__name__)

#: The file holding models, optimizers, schedulers and the trainer's position.
STATE_FILE = "state.pt"
_CHECKPOINT_POLICIES = ("best", "all", "none")
_DEFAULT_REPORTING = Batch(100)


def _rng_file(rank: int) -> str:
    return f"rng_state_rank{rank}.pkl"


@dataclass
class _State:
    """The trainer's position, checkpointed with the model."""

    batches: int = 0
    epoch: int = 0
    epoch_batch: int = 0
    last_validation: int = -1
    last_checkpoint: int = -1
    best: float | None = None
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class _LocalOp:
    """The single operation off-cluster and unmanaged: train to ``max_length``."""

    def __init__(self, ctx: PyTorchTrialContext, length: TrainUnit) -> None:
        self._ctx = ctx
        self.length = length.value
        self.unit = length.unit
        self.completed = False

    def report_progress(self, length: float) -> None:
        if self._ctx.core.mode == "unmanaged" and self._ctx.distributed.is_chief:
            self._ctx.core.train.report_progress(min(length / self.length, 1.0))

    def report_completed(self, searcher_metric: Any) -> None:
        self.completed = True


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy ships with our torch
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model) if hasattr(model, "module") else model


class Trainer:
    """Trains a :class:`PyTorchTrial`.

    Args:
        trial: the trial.
        context: the trial's context (default: ``trial.context``).

    Raises:
        TypeError: ``trial`` is not a PyTorchTrial, or no context was found.
    """

    def __init__(self, trial: PyTorchTrial, context: PyTorchTrialContext | None = None) -> None:
        if not isinstance(trial, PyTorchTrial):
            raise TypeError(f"Trainer() takes a PyTorchTrial, got {type(trial).__name__}")
        context = context if context is not None else getattr(trial, "context", None)
        if not isinstance(context, PyTorchTrialContext):
            raise TypeError(
                "Trainer(trial, context): context must be the PyTorchTrialContext from "
                "core_api.pytorch.init()"
            )
        self.trial = trial
        self.context = context
        self.state = _State()
        self._train: EpochLoader | None = None
        self._iter: Iterator[Any] | None = None

    # -- the public entry point ---------------------------------------------------------------
    def fit(
        self,
        *,
        max_length: TrainUnit | None = None,
        validation_period: TrainUnit | None = None,
        checkpoint_period: TrainUnit | None = None,
        reporting_period: TrainUnit = _DEFAULT_REPORTING,
        checkpoint_policy: str = "best",
        latest_checkpoint: str | None = None,
        searcher_metric: str | None = None,
        smaller_is_better: bool | None = None,
    ) -> None:
        """Train until the searcher (on-cluster) or ``max_length`` (otherwise) says stop, or the
        master preempts the trial.

        Args:
            max_length: how long to train off-cluster and unmanaged (required there); on-cluster
                the searcher's operations decide.
            validation_period: validate this often (default: the config's
                ``min_validation_period``; validations also happen at the end of each op).
            checkpoint_period: checkpoint this often (default: ``min_checkpoint_period``).
            reporting_period: report (averaged) training metrics this often.
            checkpoint_policy: after a validation, checkpoint if it is the ``"best"`` so far,
                ``"all"`` the time, or ``"none"``.
            latest_checkpoint: resume from this checkpoint (default on-cluster: the trial's
                latest checkpoint).
            searcher_metric: the validation metric that decides "best" (default: the config's
                ``searcher.metric``).
            smaller_is_better: for ``searcher_metric`` (default: the config's, else True).

        Raises:
            ValueError: a bad argument; the message names it.
        """
        ctx = self.context
        core = ctx.core
        config = ctx.get_experiment_config()
        searcher_cfg = config.get("searcher") or {}
        if checkpoint_policy not in _CHECKPOINT_POLICIES:
            raise ValueError(
                f"checkpoint_policy must be one of {_CHECKPOINT_POLICIES}, "
                f"got {checkpoint_policy!r}"
            )
        for name, value in (
            ("max_length", max_length),
            ("validation_period", validation_period),
            ("checkpoint_period", checkpoint_period),
            ("reporting_period", reporting_period),
        ):
            if value is not None and not isinstance(value, TrainUnit):
                raise ValueError(f"{name} must be Batch(n), Epoch(n) or Record(n), got {value!r}")
        on_cluster = core.mode == "cluster"
        if not on_cluster and max_length is None:
            raise ValueError(
                f"fit(max_length=...) is required {core.mode} (e.g. max_length=Epoch(5)); "
                "on-cluster the searcher decides"
            )
        self._metric = searcher_metric or searcher_cfg.get("metric")
        sib = smaller_is_better
        if sib is None:
            sib = bool(searcher_cfg.get("smaller_is_better", True))
        self._smaller = sib
        self._policy = checkpoint_policy
        if validation_period is None:
            validation_period = from_config(
                config.get("min_validation_period"), "min_validation_period"
            )
        if checkpoint_period is None:
            checkpoint_period = from_config(
                config.get("min_checkpoint_period"), "min_checkpoint_period"
            )

        dist = ctx.distributed
        self._train = EpochLoader(
            self.trial.build_training_data_loader(),
            rank=dist.rank,
            size=dist.size,
            seed=ctx.get_trial_seed(),
            train=True,
        )
        self._val_src = self.trial.build_validation_data_loader()
        self._val = EpochLoader(
            self._val_src, rank=dist.rank, size=dist.size, seed=ctx.get_trial_seed(), train=False
        )
        per_rank_bs = (
            self._train.batch_size if self._train.rebuilt else (self._train.loader.batch_size or 1)
        )
        self._global_bs = per_rank_bs * dist.size
        records_per_epoch = config.get("records_per_epoch")
        self._epoch_len = (
            max(1, math.ceil(int(records_per_epoch) / self._global_bs))
            if records_per_epoch
            else len(self._train)
        )
        ctx._epoch_len = len(self._train)
        to_b = self._to_batches
        self._val_every = to_b(validation_period) if validation_period else 0
        self._ckpt_every = to_b(checkpoint_period) if checkpoint_period else 0
        self._report_every = to_b(reporting_period) if reporting_period else 0

        resume = latest_checkpoint
        if resume is None and on_cluster and core.info is not None:
            resume = core.info.latest_checkpoint
        if resume is not None:
            self._restore(resume)
        ctx._batch_idx = self.state.batches
        ctx._epoch_idx = self.state.epoch

        ops: Iterator[Any]
        if on_cluster:
            ops = core.searcher.operations()
        else:
            assert max_length is not None
            ops = iter([_LocalOp(ctx, max_length)])
        for op in ops:
            target = to_b(unit_from(op.length, op.unit))
            if not self._train_until(target, op):
                return  # preempted: checkpointed, the process should exit
            metrics = self._last_metrics
            if self.state.last_validation != self.state.batches or metrics is None:
                metrics = self._validate()
            self._report_training()
            if dist.is_chief:
                op.report_progress(self._in_units(self.state.batches, op.unit))
                op.report_completed(self._searcher_value(metrics, required=on_cluster))
        if self.state.last_checkpoint != self.state.batches:
            self._checkpoint()

    # -- the loop ----------------------------------------------------------------------------
    def _to_batches(self, unit: TrainUnit) -> int:
        return unit.to_batches(self._epoch_len, self._global_bs)

    def _in_units(self, batches: int, unit: str) -> float:
        if unit == "epochs":
            return batches / self._epoch_len
        if unit == "records":
            return float(batches * self._global_bs)
        return float(batches)

    _last_metrics: dict[str, float] | None = None

    def _train_until(self, target: int, op: Any) -> bool:
        """Train to ``target`` batches; False when preempted (after checkpointing)."""
        ctx, st, trial = self.context, self.state, self.trial
        core = ctx.core
        assert self._train is not None
        epoch_len = len(self._train)
        models = ctx.models
        for m in models:
            m.train()
        while st.batches < target:
            if self._iter is None:
                self._iter = self._train.epoch(st.epoch, st.epoch_batch)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._end_epoch()
                continue
            ctx._batch_idx = st.batches
            ctx._epoch_idx = st.epoch
            out = trial.train_batch(ctx.to_device(batch), st.epoch, st.batches)
            self._accumulate(out)
            for sched in ctx.lr_schedulers:
                if sched.step_mode is StepMode.STEP_EVERY_BATCH:
                    sched.step()
            st.batches += 1
            st.epoch_batch += 1
            if st.epoch_batch == epoch_len and self._train.rebuilt:
                self._end_epoch()
            done = st.batches
            if self._report_every and done % self._report_every == 0:
                self._report_training()
                if ctx.distributed.is_chief:
                    op.report_progress(self._in_units(done, op.unit))
            if self._val_every and done % self._val_every == 0:
                self._validate()
            if self._ckpt_every and done % self._ckpt_every == 0 and st.last_checkpoint != done:
                self._checkpoint()
            if core.preempt.should_preempt():
                logger.info("preempted at batch %d: checkpointing and stopping", done)
                if st.last_checkpoint != done:
                    self._checkpoint()
                return False
        return True

    def _end_epoch(self) -> None:
        st = self.state
        st.epoch += 1
        st.epoch_batch = 0
        self._iter = None
        for sched in self.context.lr_schedulers:
            if sched.step_mode is StepMode.STEP_EVERY_EPOCH:
                sched.step()

    def _accumulate(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            out = {"loss": out}
        if not isinstance(out, Mapping):
            raise TypeError(
                f"{type(self.trial).__name__}.train_batch() must return a loss tensor or a dict "
                f"of metrics, got {type(out).__name__}"
            )
        sums, counts = self._pending_sums, self.state.counts
        for name, value in out.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
            elif not isinstance(value, (int, float)):
                raise TypeError(
                    f"train_batch() metric {name!r} must be a number or a 0-d tensor, got "
                    f"{type(value).__name__}"
                )
            prev = sums.get(name)
            sums[name] = value if prev is None else prev + value
            counts[name] = counts.get(name, 0) + 1

    @property
    def _pending_sums(self) -> dict[str, Any]:
        # Sums stay tensors (no device sync per batch) until reported or checkpointed.
        return self.state.sums

    def _reduce_pending(self) -> dict[str, float]:
        st = self.state
        means = {k: float(v) / st.counts[k] for k, v in st.sums.items() if st.counts.get(k)}
        return means

    def _report_training(self) -> None:
        st, dist = self.state, self.context.distributed
        if not st.counts:
            return
        means = self._reduce_pending()
        st.sums, st.counts = {}, {}
        if dist.size > 1:
            gathered = dist.allgather(means)
            keys = set().union(*gathered)
            means = {
                k: sum(g[k] for g in gathered if k in g) / sum(1 for g in gathered if k in g)
                for k in keys
            }
        if dist.is_chief:
            self.context.core.train.report_training_metrics(st.batches, means)
            if self.context.core.mode != "off-cluster":  # off-cluster core_api logs them
                logger.info("batch %d: training %s", st.batches, _fmt(means))

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        ctx, st, dist = self.context, self.state, self.context.distributed
        rng = _rng_state()  # validation must not change what training draws next
        modes = [m.training for m in ctx.models]
        for m in ctx.models:
            m.eval()
        try:
            metrics = self._evaluate()
        finally:
            for m, was in zip(ctx.models, modes, strict=True):
                m.train(was)
            _set_rng_state(rng)
        st.last_validation = st.batches
        self._last_metrics = metrics
        if dist.is_chief:
            ctx.core.train.report_validation_metrics(st.batches, metrics)
            if ctx.core.mode != "off-cluster":
                logger.info("batch %d: validation %s", st.batches, _fmt(metrics))
        value = self._searcher_value(metrics, required=False)
        improved = value is not None and (
            st.best is None or (value < st.best if self._smaller else value > st.best)
        )
        if improved:
            st.best = value
        wanted = self._policy == "all" or (self._policy == "best" and improved)
        if wanted and st.last_checkpoint != st.batches:
            self._checkpoint()
        return metrics

    def _evaluate(self) -> dict[str, float]:
        ctx, dist, trial = self.context, self.context.distributed, self.trial
        full: Mapping[str, Any] | None = None
        if type(trial).evaluate_full_dataset is not PyTorchTrial.evaluate_full_dataset:
            if dist.is_chief:
                full = trial.evaluate_full_dataset(self._val_src)
                if full is None:
                    raise ValueError("evaluate_full_dataset() returned None")
            if dist.size > 1:
                full = dist.broadcast(
                    None if full is None else _floats(full, "evaluate_full_dataset")
                )
            assert full is not None
            return _floats(full, "evaluate_full_dataset")
        sums: dict[str, float] = {}
        weight: dict[str, float] = {}
        for idx, batch in enumerate(self._val.epoch(0)):
            n = trial.get_batch_length(batch)
            for k, v in _floats(
                trial.evaluate_batch(ctx.to_device(batch), idx), "evaluate_batch"
            ).items():
                sums[k] = sums.get(k, 0.0) + v * n
                weight[k] = weight.get(k, 0.0) + n
        if dist.size > 1:
            parts = dist.allgather((sums, weight))
            sums, weight = {}, {}
            for s, w in parts:
                for k in s:
                    sums[k] = sums.get(k, 0.0) + s[k]
                    weight[k] = weight.get(k, 0.0) + w[k]
        if not weight:
            raise ValueError("the validation data loader yielded no batches")
        return {k: sums[k] / weight[k] for k in sums}

    def _searcher_value(self, metrics: Mapping[str, float], *, required: bool) -> float | None:
        name = self._metric
        if name is None:
            return None
        if name not in metrics:
            if required:
                raise ValueError(
                    f"the searcher metric {name!r} is not among the validation metrics "
                    f"{sorted(metrics)}; return it from evaluate_batch()"
                )
            return None
        return float(metrics[name])

    # -- checkpoints -------------------------------------------------------------------------
    def _checkpoint(self) -> str:
        ctx, st = self.context, self.state
        dist = ctx.distributed
        saved = _State(**{**asdict(st), "sums": self._reduce_sums(), "last_checkpoint": st.batches})
        md = {"steps_completed": st.batches, "epoch": st.epoch, "format": "core_api.pytorch/1"}
        with ctx.core.checkpoint.store_path(md, shard=True) as (path, storage_id):
            with open(path / _rng_file(dist.rank), "wb") as f:
                pickle.dump(_rng_state(), f)
            if dist.is_chief:
                torch.save(
                    {
                        "models": [_unwrap(m).state_dict() for m in ctx.models],
                        "optimizers": [o.state_dict() for o in ctx.optimizers],
                        "lr_schedulers": [s.state_dict() for s in ctx.lr_schedulers],
                        "trial": self.trial.state_dict(),
                        "trainer": asdict(saved),
                    },
                    path / STATE_FILE,
                )
        st.last_checkpoint = st.batches
        logger.info("batch %d: checkpoint %s", st.batches, storage_id)
        return storage_id

    def _reduce_sums(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.state.sums.items()}

    def _restore(self, storage_id: str) -> None:
        ctx = self.context
        rank = ctx.distributed.rank
        with ctx.core.checkpoint.restore_path(storage_id) as path:
            path = pathlib.Path(path)
            if not (path / STATE_FILE).is_file():
                raise ValueError(
                    f"checkpoint {storage_id} has no {STATE_FILE}: it was not written by "
                    "core_api.pytorch.Trainer"
                )
            state = torch.load(path / STATE_FILE, map_location=ctx.device, weights_only=True)
            rng_path = path / _rng_file(rank)
            if not rng_path.is_file():
                rng_path = path / _rng_file(0)  # resumed on more ranks than it was saved with
            with open(rng_path, "rb") as f:
                rng = pickle.load(f)  # our own file, in the trial's storage
        groups: list[tuple[str, list[Any], list[Any]]] = [
            ("models", [_unwrap(m) for m in ctx.models], state["models"]),
            ("optimizers", list(ctx.optimizers), state["optimizers"]),
            ("lr_schedulers", list(ctx.lr_schedulers), state["lr_schedulers"]),
        ]
        for name, objs, saved in groups:
            if len(objs) != len(saved):
                raise ValueError(
                    f"checkpoint {storage_id} holds {len(saved)} {name} but the trial wrapped "
                    f"{len(objs)}"
                )
            for obj, sd in zip(objs, saved, strict=True):
                obj.load_state_dict(sd)
        self.trial.load_state_dict(state.get("trial") or {})
        self.state = _State(**state["trainer"])
        self.state.last_checkpoint = self.state.batches
        _set_rng_state(rng)
        logger.info(
            "resumed from checkpoint %s at batch %d (epoch %d, batch %d of the epoch)",
            storage_id,
            self.state.batches,
            self.state.epoch,
            self.state.epoch_batch,
        )


def _floats(metrics: Any, where: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{where}() must return a dict of metrics, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"{where}() metric names must be str, got {k!r}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{where}() metric {k!r} must be a number, got {type(v).__name__}"
            ) from exc
    return out


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()))
