"""Stage 3: hyperparameters from the trial's info and the searcher's operations."""

import logging
import pathlib

import torch
from data import loaders
from net import Net
from torch.nn import functional as F

import core_api as det

torch.set_num_threads(1)


def main(core_context):
    info = det.get_cluster_info()
    assert info is not None
    hparams = info.trial.hparams
    trial_id = info.trial.trial_id
    latest_checkpoint = info.latest_checkpoint

    train_loader, test_loader = loaders(64)
    model = Net(hparams)
    epochs_completed = 0
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            path = pathlib.Path(path)
            model = torch.load(path / "checkpoint.pt", weights_only=False)
            epochs_completed, ckpt_trial = (int(x) for x in (path / "state").read_text().split(","))
            if ckpt_trial != trial_id:
                epochs_completed = 0
    optimizer = torch.optim.Adadelta(model.parameters(), lr=hparams["learning_rate"])

    epoch = epochs_completed
    test_loss = None
    for op in core_context.searcher.operations():
        while epoch < op.length:
            model.train()
            for data, target in train_loader:
                optimizer.zero_grad()
                loss = F.nll_loss(model(data), target)
                loss.backward()
                optimizer.step()
            epoch += 1
            steps_completed = epoch * len(train_loader)
            core_context.train.report_training_metrics(
                steps_completed=steps_completed, metrics={"train_loss": loss.item()}
            )
            model.eval()
            with torch.no_grad():
                test_loss = sum(
                    F.nll_loss(model(d), t, reduction="sum").item() for d, t in test_loader
                ) / len(test_loader.dataset)
            core_context.train.report_validation_metrics(
                steps_completed=steps_completed, metrics={"test_loss": test_loss}
            )
            op.report_progress(epoch)
            with core_context.checkpoint.store_path({"steps_completed": steps_completed}) as (
                path,
                _storage_id,
            ):
                torch.save(model, path / "checkpoint.pt")
                path.joinpath("state").write_text(f"{epoch},{trial_id}")
            if core_context.preempt.should_preempt():
                return
        op.report_completed(test_loss)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    with det.core.init() as core_context:
        main(core_context=core_context)
