"""Ladder step 3: + the searcher API. Train to each operation's absolute length, report the
searcher metric, and take the next (longer) operation if the searcher promotes the trial."""

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
    for op in ctx.searcher.operations():
        while steps_completed < op.length:
            loss = dc.train_step(model, opt, *dc.batch(data, steps_completed))
            steps_completed += 1
            if steps_completed % 10 == 0:
                ctx.train.report_training_metrics(steps_completed, {"loss": loss})
                op.report_progress(steps_completed)
        metrics = dc.evaluate(model, data)
        ctx.train.report_validation_metrics(steps_completed, metrics)
        with ctx.checkpoint.store_path({"steps_completed": steps_completed}) as (path, _):
            dc.save_state(path, model, opt, steps_completed)
        op.report_completed(metrics["validation_loss"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = core_api.get_cluster_info()
    hparams = {**dc.DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    # Off-cluster the searcher yields one operation of max_length batches.
    with core_api.init(max_length=int(hparams["batches"])) as core_context:
        main(core_context, hparams, info.latest_checkpoint if info else None)
