"""The digits MLP as a PyTorch Lightning module, trained with ``core_api.lightning.fit``.

Metrics logged with ``self.log`` reach the master, a checkpoint is stored after each validation,
a pause checkpoints and stops, and each searcher operation is one ``Trainer.fit`` resumed from
the latest checkpoint. Runs off-cluster too: ``python lightning_digits.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import digits_common as dc
import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import core_api
import core_api.lightning


class DigitsModule(pl.LightningModule):
    def __init__(self, lr: float, hidden_size: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = dc.make_model(hidden_size)
        self.lr = lr

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
        return dc.make_optimizer(self.net, self.lr)


def loaders() -> tuple[DataLoader, DataLoader]:
    data = dc.load_data()
    train = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=dc.BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=512)
    return train, val


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = core_api.get_cluster_info()
    hp = {**dc.DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    train_loader, val_loader = loaders()
    with core_api.init(max_length=int(hp["batches"])) as ctx:
        core_api.lightning.fit(
            ctx,
            DigitsModule(hp["lr"], hp["hidden_size"]),
            searcher_metric="val_loss",
            trainer_kwargs={"accelerator": "cpu", "log_every_n_steps": 10},
            train_dataloaders=train_loader,
            val_dataloaders=val_loader,
        )
