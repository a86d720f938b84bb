"""The demo workload: a small MLP on scikit-learn's digits, written against the Core API.

Uses every rung of the ladder: hyperparameters and the resume point from the cluster info,
batched metrics, checkpoints, searcher operations (absolute lengths, so an ASHA promotion simply
continues training) and preemption (checkpoint and exit when paused). Runs off-cluster too:
``python train.py`` trains once with the default hyperparameters and logs its metrics.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import core_api

torch.set_num_threads(1)
logger = logging.getLogger("digits")

BATCH_SIZE = 32
DEFAULTS = {"lr": 0.05, "hidden_size": 64}


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x_t = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y_t = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(x_t))
    return x_t[:cut], y_t[:cut], x_t[cut:], y_t[cut:]


def batch_indices(n: int, step: int) -> torch.Tensor:
    """Batches are a function of the step, so a resumed run sees the same data order."""
    per_epoch = n // BATCH_SIZE
    epoch, i = divmod(step, per_epoch)
    order = torch.from_numpy(np.random.default_rng(1000 + epoch).permutation(n))
    return order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]


def main(ctx: core_api.Context, hp: dict, latest_checkpoint: str | None) -> None:
    x_train, y_train, x_val, y_val = load_data()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, int(hp["hidden_size"])), nn.ReLU(), nn.Linear(int(hp["hidden_size"]), 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=float(hp["lr"]), momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0

    if latest_checkpoint:
        with ctx.checkpoint.restore_path(latest_checkpoint) as path:
            state = torch.load(pathlib.Path(path) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        steps = int(state["steps"])
        logger.info("resumed from checkpoint %s at step %d", latest_checkpoint, steps)

    def checkpoint() -> None:
        with ctx.checkpoint.store_path({"steps_completed": steps}) as (path, _):
            torch.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "steps": steps},
                path / "state.pt",
            )

    for op in ctx.searcher.operations():
        while steps < op.length:
            idx = batch_indices(len(x_train), steps)
            model.train()
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            steps += 1
            if steps % 10 == 0:
                ctx.train.report_training_metrics(steps, {"loss": loss.item()})
                op.report_progress(steps)
            if ctx.preempt.should_preempt():
                logger.info("preempted at step %d: checkpointing and exiting", steps)
                checkpoint()
                return
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            val_loss = loss_fn(logits, y_val).item()
            accuracy = (logits.argmax(1) == y_val).float().mean().item()
        ctx.train.report_validation_metrics(
            steps, {"validation_loss": val_loss, "accuracy": accuracy}
        )
        checkpoint()
        op.report_completed(val_loss)
        logger.info("step %d: validation_loss %.4f accuracy %.4f", steps, val_loss, accuracy)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = core_api.get_cluster_info()
    hparams = {**DEFAULTS, **(info.trial.hparams if info else {})}
    with core_api.init(max_length=1000) as core_context:
        main(core_context, hparams, info.latest_checkpoint if info else None)
