"""A trial with no training: says where it starts from, saves one checkpoint, reports a metric."""

import logging

import core_api as det

logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
info = det.get_cluster_info()
assert info is not None
print(f"START FROM {info.latest_checkpoint}")
logging.getLogger("tiny").warning("a warning line")
with det.core.init() as core_context:
    for op in core_context.searcher.operations():
        core_context.train.report_validation_metrics(
            steps_completed=op.length, metrics={"loss": 1.0 / info.trial.trial_id}
        )
        with core_context.checkpoint.store_path({"steps_completed": op.length}) as (path, _):
            (path / "weights.txt").write_text(f"trial {info.trial.trial_id}")
            (path / "extra").mkdir()
            (path / "extra" / "notes.md").write_text("notes")
        op.report_completed(1.0 / info.trial.trial_id)
