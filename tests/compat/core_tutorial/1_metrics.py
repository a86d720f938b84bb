"""Stage 1: report training and validation metrics through the Core API."""

import logging

import torch
from data import loaders
from net import Net
from torch.nn import functional as F

import core_api as det

torch.set_num_threads(1)


def train(model, loader, optimizer, epoch, core_context):
    model.train()
    for batch_idx, (data, target) in enumerate(loader):
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        if (batch_idx + 1) % 10 == 0:
            core_context.train.report_training_metrics(
                steps_completed=batch_idx + 1 + epoch * len(loader),
                metrics={"train_loss": loss.item()},
            )


def test(model, loader, epoch, core_context, steps_completed):
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for data, target in loader:
            total += F.nll_loss(model(data), target, reduction="sum").item()
            n += len(data)
    core_context.train.report_validation_metrics(
        steps_completed=steps_completed, metrics={"test_loss": total / n}
    )
    return total / n


def main(core_context):
    train_loader, test_loader = loaders(64)
    model = Net({})
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    for epoch in range(2):
        train(model, train_loader, optimizer, epoch, core_context)
        test(model, test_loader, epoch, core_context, (epoch + 1) * len(train_loader))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    with det.core.init() as core_context:
        main(core_context=core_context)
