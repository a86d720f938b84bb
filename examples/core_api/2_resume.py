"""Ladder step 2: + resume. At startup, load the latest checkpoint the master hands the trial
(after a crash, a pause, or a warm start) and continue from its step."""

from __future__ import annotations

import logging

import digits_common as dc

import core_api


def main(ctx: core_api.Context, hp: dict, latest_checkpoint: str | None) -> None:
    data = dc.load_data()
    model = dc.make_model(hp["hidden_size"])
    opt = dc.make_optimizer(model, hp["lr"])
    steps_completed = 0
    if latest_checkpoint is not None:
        with ctx.checkpoint.restore_path(latest_checkpoint) as path:
            steps_completed = dc.load_state(path, model, opt)
        print(f"resumed from checkpoint {latest_checkpoint} at step {steps_completed}")
    batches = int(hp["batches"])
    while steps_completed < batches:
        loss = dc.train_step(model, opt, *dc.batch(data, steps_completed))
        steps_completed += 1
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
        main(core_context, hparams, info.latest_checkpoint if info else None)
