"""The data of the tutorial cases: scikit-learn's digits in place of MNIST (nothing to download).

Images are 8x8 with one channel, scaled to [0, 1] and normalized as the tutorial normalizes MNIST.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


def get_datasets() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order] / 16.0 - 0.3) / 0.4
    images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8)
    labels = torch.tensor(y[order], dtype=torch.long)
    cut = int(0.8 * len(images))
    return (
        TensorDataset(images[:cut], labels[:cut]),
        TensorDataset(images[cut:], labels[cut:]),
    )


def loaders(batch_size: int, sampler_train=None, sampler_test=None):  # type: ignore[no-untyped-def]
    train, test = get_datasets()
    return (
        DataLoader(
            train, batch_size=batch_size, shuffle=sampler_train is None, sampler=sampler_train
        ),
        DataLoader(test, batch_size=1000, sampler=sampler_test),
    )
