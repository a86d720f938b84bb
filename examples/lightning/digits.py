"""A Lightning digits model on the platform, Lightning-style: the user builds their own
``Trainer`` (here with a ``CSVLogger`` and a ``ModelCheckpoint`` of their own) and adds
``DeterminedLogger`` + ``DeterminedCallback``.

On-cluster the searcher's operations decide how long it trains (validations every
``val_every`` steps complete them), a pause stores a checkpoint and the next run resumes it
through ``ckpt_path``. Off-cluster (``python digits.py``) ``max_epochs`` decides.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import core_api
from core_api.lightning import DeterminedCallback, DeterminedLogger, latest_checkpoint_path

torch.set_num_threads(1)

DEFAULT_HPARAMS: dict[str, Any] = {"lr": 0.05, "hidden_size": 32, "val_every": 50, "max_epochs": 3}


class DigitsModule(pl.LightningModule):
    def __init__(self, lr: float, hidden_size: int) -> None:
        super().__init__()
        self.save_hyperparameters()  # recorded in every checkpoint's metadata on the master
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


def loaders() -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    xt = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    yt = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(xt))
    gen = torch.Generator().manual_seed(0)
    train = DataLoader(
        TensorDataset(xt[:cut], yt[:cut]), batch_size=32, shuffle=True, generator=gen
    )
    return train, DataLoader(TensorDataset(xt[cut:], yt[cut:]), batch_size=512)


def main() -> None:
    info = core_api.get_cluster_info()
    hp = {**DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    train, val = loaders()
    with core_api.init() as ctx:
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=int(hp["max_epochs"]) if info is None else -1,  # on-cluster: the searcher
            val_check_interval=int(hp["val_every"]),
            check_val_every_n_epoch=None,
            log_every_n_steps=10,
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=[CSVLogger("lightning_logs"), DeterminedLogger(ctx)],
            callbacks=[
                ModelCheckpoint(dirpath="user_checkpoints", monitor="val_loss"),
                DeterminedCallback(ctx),
            ],
        )
        trainer.fit(
            DigitsModule(hp["lr"], hp["hidden_size"]),
            train_dataloaders=train,
            val_dataloaders=val,
            ckpt_path=latest_checkpoint_path(ctx),
        )


if __name__ == "__main__":
    main()
