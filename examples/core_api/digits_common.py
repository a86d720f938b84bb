"""Shared by the Core API ladder examples: the data, the model, one training step, evaluation,
and saving/loading the whole training state.

A tiny MLP learns scikit-learn's ``load_digits`` (8x8 images of digits, shipped with sklearn, so
nothing is downloaded) in seconds on one CPU core. Batches are a pure function of the step
number, and the saved state holds the model, the optimizer and the step, so a run resumed from a
checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

torch.set_num_threads(1)

BATCH_SIZE = 32
DEFAULT_HPARAMS: dict[str, Any] = {"lr": 0.05, "hidden_size": 32, "batches": 300}


@dataclass(frozen=True)
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@functools.lru_cache(maxsize=1)
def load_data(seed: int = 0) -> Data:
    """The digits, scaled to [0, 1], split 80/20 with a fixed shuffle."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(x))
    return Data(x[:cut], y[:cut], x[cut:], y[cut:])


def make_model(hidden_size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 10))


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed * 100_003 + epoch).permutation(n))


def batch(
    data: Data, step: int, *, rank: int = 0, size: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch for global step ``step`` (this rank's slice of it when ``size > 1``)."""
    n = len(data.x_train)
    per_epoch = n // BATCH_SIZE
    epoch, i = divmod(step, per_epoch)
    idx = _epoch_order(n, epoch, seed)[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
    idx = idx[rank::size]
    return data.x_train[idx], data.y_train[idx]


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
) -> float:
    model.train()
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return float(loss.item())


@torch.no_grad()
def evaluate(model: nn.Module, data: Data) -> dict[str, float]:
    model.eval()
    logits = model(data.x_val)
    loss = nn.functional.cross_entropy(logits, data.y_val)
    acc = (logits.argmax(dim=1) == data.y_val).float().mean()
    return {"validation_loss": float(loss), "accuracy": float(acc)}


def save_state(
    path: pathlib.Path, model: nn.Module, opt: torch.optim.Optimizer, steps: int
) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "steps": steps},
        path / "state.pt",
    )


def load_state(path: pathlib.Path, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load a saved state into ``model`` and ``opt``; returns the steps completed."""
    state = torch.load(path / "state.pt", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["steps"])
