"""Stage 2: checkpoints, resume from the latest one, and stop when preempted."""

import logging
import pathlib
import time

import torch
from data import loaders
from net import Net
from torch.nn import functional as F

import core_api as det

torch.set_num_threads(1)
EPOCHS = 3


def load_state(trial_id, checkpoint_directory):
    checkpoint_directory = pathlib.Path(checkpoint_directory)
    with checkpoint_directory.joinpath("state").open("r") as f:
        epochs_completed, ckpt_trial_id = (int(field) for field in f.read().split(","))
    logging.info(f"resuming at epoch {epochs_completed} (checkpoint of trial {ckpt_trial_id})")
    model = torch.load(checkpoint_directory / "checkpoint.pt", weights_only=False)
    if ckpt_trial_id != trial_id:
        epochs_completed = 0  # a warm start from another trial begins counting again
    return model, epochs_completed


def main(core_context, epoch_seconds):
    info = det.get_cluster_info()
    assert info is not None, "this stage runs on the cluster"
    latest_checkpoint = info.latest_checkpoint
    trial_id = info.trial.trial_id

    train_loader, test_loader = loaders(64)
    model, epochs_completed = Net({}), 0
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            model, epochs_completed = load_state(trial_id, path)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)

    for epoch in range(epochs_completed, EPOCHS):
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
        steps_completed = (epoch + 1) * len(train_loader)
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

        checkpoint_metadata_dict = {"steps_completed": steps_completed}
        with core_context.checkpoint.store_path(checkpoint_metadata_dict) as (path, storage_id):
            torch.save(model, path / "checkpoint.pt")
            with path.joinpath("state").open("w") as f:
                f.write(f"{epoch + 1},{trial_id}")
        logging.info(f"epoch {epoch + 1} checkpointed as {storage_id}")

        time.sleep(epoch_seconds)  # pretend an epoch is long: lets a test pause mid-run
        if core_context.preempt.should_preempt():
            logging.info("preempted: exiting, the next run resumes from the checkpoint")
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    info = det.get_cluster_info()
    epoch_seconds = float(info.trial.hparams.get("epoch_seconds", 0)) if info else 0.0
    with det.core.init() as core_context:
        main(core_context=core_context, epoch_seconds=epoch_seconds)
