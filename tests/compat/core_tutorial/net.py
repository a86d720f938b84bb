"""A small convolutional net for 8x8 digits (the tutorial's net, sized for 8x8 inputs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    def __init__(self, hparams: dict) -> None:
        super().__init__()
        n1 = int(hparams.get("n_filters1", 8))
        n2 = int(hparams.get("n_filters2", 16))
        self.conv1 = nn.Conv2d(1, n1, 3, 1)
        self.conv2 = nn.Conv2d(n1, n2, 3, 1)
        self.dropout1 = nn.Dropout(float(hparams.get("dropout1", 0.25)))
        self.dropout2 = nn.Dropout(float(hparams.get("dropout2", 0.5)))
        self.fc1 = nn.Linear(n2 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(torch.flatten(x, 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)
