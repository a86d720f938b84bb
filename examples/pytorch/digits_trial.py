"""A PyTorchTrial on scikit-learn's digits: the same script runs on-cluster (as an experiment),
unmanaged (with DET_MASTER set) or off-cluster (``python digits_trial.py``).

The model has dropout and the LR follows a step schedule, so exact resumption after a pause
needs the RNG, the optimizer, the scheduler and the data position all restored; the Trainer
checkpoints all of them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import core_api.pytorch as cp

torch.set_num_threads(1)

DEFAULT_HPARAMS: dict[str, Any] = {
    "global_batch_size": 32,
    "lr": 0.05,
    "hidden_size": 32,
    "dropout": 0.1,
    "step_delay": 0.0,
}


def _datasets() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    xt = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    yt = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(xt))
    return TensorDataset(xt[:cut], yt[:cut]), TensorDataset(xt[cut:], yt[cut:])


class DigitsTrial(cp.PyTorchTrial):
    def __init__(self, context: cp.PyTorchTrialContext) -> None:
        super().__init__(context)
        hp = context.hparams
        self.train_ds, self.val_ds = _datasets()
        self.model = context.wrap_model(
            nn.Sequential(
                nn.Linear(64, int(hp["hidden_size"])),
                nn.ReLU(),
                nn.Dropout(float(hp["dropout"])),
                nn.Linear(int(hp["hidden_size"]), 10),
            )
        )
        self.opt = context.wrap_optimizer(
            torch.optim.SGD(self.model.parameters(), lr=float(hp["lr"]), momentum=0.9)
        )
        self.sched = context.wrap_lr_scheduler(
            torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.7),
            step_mode=cp.StepMode.STEP_EVERY_EPOCH,
        )
        self.step_delay = float(hp.get("step_delay", 0.0))  # pretend work, to pause mid-run

    def build_training_data_loader(self) -> DataLoader:
        return DataLoader(
            self.train_ds, batch_size=self.context.get_per_slot_batch_size(), shuffle=True
        )

    def build_validation_data_loader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=128)

    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.context.backward(loss)
        self.context.step_optimizer(self.opt)
        if self.step_delay:
            time.sleep(self.step_delay)
        return {"loss": loss}

    def evaluate_batch(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        logits = self.model(x)
        return {
            "validation_loss": nn.functional.cross_entropy(logits, y),
            "accuracy": (logits.argmax(dim=1) == y).float().mean(),
        }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with cp.init(hparams=DEFAULT_HPARAMS) as context:
        trial = DigitsTrial(context)
        cp.Trainer(trial, context).fit(
            max_length=cp.Epoch(3),  # off-cluster; on-cluster the searcher decides
            reporting_period=cp.Batch(10),
        )


if __name__ == "__main__":
    main()
