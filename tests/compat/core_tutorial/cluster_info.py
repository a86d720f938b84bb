"""Prints what Determined's ``det.get_cluster_info()`` gives a trial, one field a line."""

import json
import logging

import core_api as det

logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
info = det.get_cluster_info()
assert info is not None
fields = {
    name: getattr(info, name)
    for name in (
        "container_rank",
        "container_addrs",
        "slot_ids",
        "container_slot_counts",
        "task_id",
        "allocation_id",
        "cluster_id",
        "agent_id",
        "session_token",
        "task_type",
        "gpu_uuids",
        "user_data",
        "master_url",
        "latest_checkpoint",
    )
}
trial = {
    name: getattr(info.trial, name)
    for name in ("trial_id", "experiment_id", "hparams", "trial_seed", "trial_run_id", "config")
}
print("INFO=" + json.dumps(fields, sort_keys=True))
print("TRIAL=" + json.dumps({k: v for k, v in trial.items() if k != "config"}, sort_keys=True))
logging.getLogger("cluster_info").info("logged with LOG_FORMAT")
with det.core.init(
    preempt_mode=det.core.PreemptMode.ChiefOnly,
    tensorboard_mode=det.core.TensorboardMode.MANUAL,
) as core_context:
    core_context.train.report_validation_metrics(steps_completed=1, metrics={"x": 1.0})
