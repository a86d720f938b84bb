"""Ladder step 5: distributed data-parallel training on 2 ranks (``slots_per_trial: 2``).

The launcher starts one process per rank with torch.distributed's env:// variables (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...). Every rank trains on its half of each batch (DDP
averages the gradients over gloo); the chief reports metrics and checkpoints, every rank follows
the same searcher operations and sees the same preemption answer. Run alone, it is a single
process.
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import digits_common as dc
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import core_api


def main(ctx: core_api.Context, hp: dict, latest_checkpoint: str | None) -> None:
    rank, size = ctx.distributed.rank, ctx.distributed.size
    data = dc.load_data()
    net = dc.make_model(hp["hidden_size"])  # same seed on every rank: same initial weights
    opt = dc.make_optimizer(net, hp["lr"])
    step_delay = float(hp.get("step_delay", 0.0))  # pretend work, to pause a demo mid-run
    steps_completed = 0
    if latest_checkpoint is not None:  # every rank reads the checkpoint from shared storage
        with ctx.checkpoint.restore_path(latest_checkpoint) as path:
            steps_completed = dc.load_state(path, net, opt)
        print(f"rank {rank}: resumed from {latest_checkpoint} at step {steps_completed}")
    model = DistributedDataParallel(net) if size > 1 else net

    def checkpoint() -> None:
        if rank == 0:
            with ctx.checkpoint.store_path({"steps_completed": steps_completed}) as (path, _):
                dc.save_state(path, net, opt, steps_completed)

    for op in ctx.searcher.operations():  # the chief asks the master; workers get its answer
        while steps_completed < op.length:
            xb, yb = dc.batch(data, steps_completed, rank=rank, size=size)
            loss = dc.train_step(model, opt, xb, yb)
            steps_completed += 1
            if step_delay:
                time.sleep(step_delay)
            if steps_completed % 10 == 0:
                losses = ctx.distributed.gather(loss)  # the chief gets every rank's loss
                if losses is not None:
                    ctx.train.report_training_metrics(
                        steps_completed, {"loss": statistics.fmean(losses)}
                    )
                    op.report_progress(steps_completed)
                # A collective: every rank asks together and gets the chief's answer.
                if ctx.preempt.should_preempt():
                    print(f"rank {rank}: preempted at step {steps_completed}")
                    checkpoint()
                    return
        metrics = dc.evaluate(net, data)
        checkpoint()
        if rank == 0:
            ctx.train.report_validation_metrics(steps_completed, metrics)
            op.report_completed(metrics["validation_loss"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = core_api.get_cluster_info()
    hparams = {**dc.DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    dist_ctx = core_api.DistributedContext.from_torch_distributed() if distributed else None
    try:
        with core_api.init(distributed=dist_ctx, max_length=int(hparams["batches"])) as ctx:
            main(ctx, hparams, info.latest_checkpoint if info else None)
    finally:
        if distributed:
            dist.destroy_process_group()
