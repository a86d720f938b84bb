"""Ladder step 1: report metrics and store checkpoints.

Off-cluster (``python 1_metrics_checkpoints.py``) the metrics go to the log and checkpoints to
``./checkpoints``; on the cluster the master records both.
"""

from __future__ import annotations

import logging

import digits_common as dc

import core_api


def main(ctx: core_api.Context, hp: dict) -> None:
    data = dc.load_data()
    model = dc.make_model(hp["hidden_size"])
    opt = dc.make_optimizer(model, hp["lr"])
    batches = int(hp["batches"])
    for step in range(batches):
        loss = dc.train_step(model, opt, *dc.batch(data, step))
        steps_completed = step + 1
        if steps_completed % 10 == 0:
            ctx.train.report_training_metrics(steps_completed, {"loss": loss})
        if steps_completed % 100 == 0 or steps_completed == batches:
            ctx.train.report_validation_metrics(steps_completed, dc.evaluate(model, data))
            with ctx.checkpoint.store_path({"steps_completed": steps_completed}) as (path, _):
                dc.save_state(path, model, opt, steps_completed)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = core_api.get_cluster_info()
    hparams = {**dc.DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    with core_api.init() as core_context:
        main(core_context, hparams)
