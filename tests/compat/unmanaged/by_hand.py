"""A script run by hand against a master: an unmanaged trial that records everything."""

import logging
import pathlib
import sys

import core_api as det

logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
# The one change from Determined's spelling: an unmanaged run names its length (issue 13: no
# silent length of 1 when no searcher hands one out; see docs/determined-compat.md).
with det.core.init(
    experiment_name="by-hand", hparams={"lr": 0.1, "layers": 2}, max_length=1
) as core_context:
    print("hello from an unmanaged run")
    print("a line on stderr", file=sys.stderr)
    logging.getLogger("by_hand").info("a logging line")
    for op in core_context.searcher.operations():
        core_context.train.report_training_metrics(steps_completed=5, metrics={"loss": 0.5})
        op.report_progress(op.length / 2)
        core_context.train.report_validation_metrics(steps_completed=10, metrics={"acc": 0.9})
        with core_context.checkpoint.store_path({"steps_completed": 10}) as (path, uuid):
            pathlib.Path(path, "model.txt").write_text("weights")
        op.report_progress(op.length)
        op.report_completed(0.9)
    print(f"TRIAL {core_context.info.trial.trial_id}", end="")  # no newline: still shipped
