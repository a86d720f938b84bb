"""Ladder step 4: + preemption. Check ``should_preempt()`` every batch; when the master asks
(pause, cancel, a searcher stop), checkpoint right there and exit 0. The next run resumes from
that exact step."""

from __future__ import annotations

import logging
import time

import digits_common as dc

import core_api


def main(ctx: core_api.Context, hp: dict, latest_checkpoint: str | None) -> None:
    data = dc.load_data()
    model = dc.make_model(hp["hidden_size"])
    opt = dc.make_optimizer(model, hp["lr"])
    # Seconds of pretend work per batch: lets a demo (or a test) pause a trial mid-run.
    step_delay = float(hp.get("step_delay", 0.0))
    steps_completed = 0
    if latest_checkpoint is not None:
        with ctx.checkpoint.restore_path(latest_checkpoint) as path:
            steps_completed = dc.load_state(path, model, opt)
        print(f"resumed from checkpoint {latest_checkpoint} at step {steps_completed}")

    def checkpoint() -> None:
        with ctx.checkpoint.store_path({"steps_completed": steps_completed}) as (path, _):
            dc.save_state(path, model, opt, steps_completed)

    for op in ctx.searcher.operations():
        while steps_completed < op.length:
            loss = dc.train_step(model, opt, *dc.batch(data, steps_completed))
            steps_completed += 1
            if step_delay:
                time.sleep(step_delay)
            if steps_completed % 10 == 0:
                ctx.train.report_training_metrics(steps_completed, {"loss": loss})
                op.report_progress(steps_completed)
            if ctx.preempt.should_preempt():
                print(f"preempted at step {steps_completed}: checkpointing and exiting")
                checkpoint()
                return
        metrics = dc.evaluate(model, data)
        ctx.train.report_validation_metrics(steps_completed, metrics)
        checkpoint()
        op.report_completed(metrics["validation_loss"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = core_api.get_cluster_info()
    hparams = {**dc.DEFAULT_HPARAMS, **(info.trial.hparams if info else {})}
    with core_api.init(max_length=int(hparams["batches"])) as core_context:
        main(core_context, hparams, info.latest_checkpoint if info else None)
