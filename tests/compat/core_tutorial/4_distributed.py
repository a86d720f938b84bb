"""Stage 4: distributed data-parallel training, one rank per slot, started by the launcher."""

import logging
import pathlib

import torch
import torch.distributed as dist
from data import get_datasets, loaders
from net import Net
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

import core_api as det

torch.set_num_threads(1)


def main(core_context):
    info = det.get_cluster_info()
    assert info is not None
    hparams = info.trial.hparams
    trial_id = info.trial.trial_id
    latest_checkpoint = info.latest_checkpoint
    rank, size = core_context.distributed.rank, core_context.distributed.size
    logging.info(f"training as rank {rank} of {size}")

    train_set, test_set = get_datasets()
    train_loader, test_loader = loaders(
        64,
        DistributedSampler(train_set, num_replicas=size, rank=rank),
        DistributedSampler(test_set, num_replicas=size, rank=rank, shuffle=False),
    )
    model = Net(hparams)
    epochs_completed = 0
    if latest_checkpoint is not None:
        with core_context.checkpoint.restore_path(latest_checkpoint) as path:
            path = pathlib.Path(path)
            model.load_state_dict(torch.load(path / "checkpoint.pt"))
            epochs_completed, ckpt_trial = (int(x) for x in (path / "state").read_text().split(","))
            if ckpt_trial != trial_id:
                epochs_completed = 0
    model = DDP(model)
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
            if core_context.distributed.rank == 0:
                core_context.train.report_training_metrics(
                    steps_completed=steps_completed, metrics={"train_loss": loss.item()}
                )
            model.eval()
            with torch.no_grad():
                local = sum(F.nll_loss(model(d), t, reduction="sum").item() for d, t in test_loader)
            parts = core_context.distributed.gather((local, len(test_loader.sampler)))
            if core_context.distributed.rank == 0:
                test_loss = sum(p[0] for p in parts) / sum(p[1] for p in parts)
                core_context.train.report_validation_metrics(
                    steps_completed=steps_completed, metrics={"test_loss": test_loss}
                )
                op.report_progress(epoch)
            if core_context.distributed.rank == 0:
                with core_context.checkpoint.store_path({"steps_completed": steps_completed}) as (
                    path,
                    _storage_id,
                ):
                    torch.save(model.module.state_dict(), path / "checkpoint.pt")
                    path.joinpath("state").write_text(f"{epoch},{trial_id}")
            if core_context.preempt.should_preempt():
                return
        if core_context.distributed.rank == 0:
            op.report_completed(test_loss)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    dist.init_process_group("gloo")  # the tutorial uses nccl on GPUs; these slots are CPUs
    distributed = det.core.DistributedContext.from_torch_distributed()
    with det.core.init(distributed=distributed) as core_context:
        main(core_context=core_context)
