"""Stage 0: a plain PyTorch script, run by the master as it is (no Determined calls)."""

import logging

import torch
from data import loaders
from net import Net
from torch.nn import functional as F

torch.set_num_threads(1)


def train(model, loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(loader):
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        if batch_idx % 10 == 0:
            logging.info(f"epoch {epoch} batch {batch_idx} loss {loss.item():.4f}")


def test(model, loader):
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for data, target in loader:
            out = model(data)
            total += F.nll_loss(out, target, reduction="sum").item()
            correct += out.argmax(dim=1).eq(target).sum().item()
            n += len(data)
    logging.info(f"test loss {total / n:.4f} accuracy {correct / n:.3f}")
    return total / n


def main():
    train_loader, test_loader = loaders(64)
    model = Net({})
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    for epoch in range(2):
        train(model, train_loader, optimizer, epoch)
        test(model, test_loader)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
