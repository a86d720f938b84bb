"""Determined's Core API tutorial, stages 0-4, run on a real master.

Each stage in ``core_tutorial/`` is written as Determined's tutorial has it, with only the import
line changed (``import core_api as det`` for ``import determined as det``), scikit-learn's
digits in place of MNIST, and 2 slots in place of 8. The configs carry the names of Determined's
PyTorch MNIST Core API tutorial (``const``, ``metrics``, ``checkpoints``, ``adaptive``,
``distributed`` with the launcher) and its shape.
"""

from __future__ import annotations

import json

import pytest
import yaml

from determined_sdk import client
from master_server.app import Master
from tests.support import wait_for

from .conftest import TUTORIAL

pytestmark = pytest.mark.slow


def _config(stage: str) -> dict:
    return yaml.safe_load((TUTORIAL / f"{stage}.yaml").read_text())


def _run(stage: str, timeout: float = 300) -> client.Experiment:
    exp = client.create_experiment(config=_config(stage), model_dir=str(TUTORIAL))
    state = exp.wait(interval=0.2, timeout=timeout)
    if state != client.ExperimentState.COMPLETED:
        logs = "\n".join(str(line) for t in exp.list_trials() for line in t.logs())
        raise AssertionError(f"{stage}: {state}\n{logs[-4000:]}")
    return exp


def test_cluster_info_has_determineds_fields(det_client: client.Determined, master: Master) -> None:
    exp = _run("cluster_info")
    trial = exp.list_trials()[0]
    lines = [str(line) for line in trial.logs()]
    info = json.loads(next(x for x in lines if x.startswith("INFO="))[5:])
    tinfo = json.loads(next(x for x in lines if x.startswith("TRIAL="))[6:])
    assert info["container_rank"] == 0
    assert info["container_addrs"] and info["slot_ids"] == [0]
    assert info["container_slot_counts"] == [1]
    assert info["task_id"] and info["allocation_id"].startswith(info["task_id"])
    assert info["task_type"] == "TRIAL" and info["gpu_uuids"] == []
    assert info["user_data"] == {"url": "digits"}
    assert info["master_url"] == master.address
    assert info["latest_checkpoint"] is None
    assert tinfo["trial_id"] == trial.id and tinfo["experiment_id"] == exp.id
    assert tinfo["hparams"] == {"learning_rate": 0.5}
    assert tinfo["trial_run_id"] == 1 and isinstance(tinfo["trial_seed"], int)
    # det.LOG_FORMAT: "LEVEL: [pid] logger: message"
    assert any(x.startswith("INFO: [") and "] cluster_info: logged" in x for x in lines)


def test_stage0_plain_script(det_client: client.Determined) -> None:
    exp = _run("const")
    assert any("test loss" in str(x) for x in exp.list_trials()[0].logs())


def test_stage1_metrics(det_client: client.Determined) -> None:
    exp = _run("metrics")
    trial = exp.list_trials()[0]
    validation = [m for m in trial.iter_metrics("validation")]
    assert [m.steps_completed for m in validation] == [23, 46]
    assert trial.summary_metrics["validation_metrics"]["test_loss"]["count"] == 2
    assert len(list(trial.iter_metrics("training"))) == 4


def test_stage2_checkpoints_pause_and_resume(det_client: client.Determined) -> None:
    config = _config("checkpoints")
    config["hyperparameters"]["epoch_seconds"] = 2
    exp = client.create_experiment(config=config, model_dir=str(TUTORIAL))
    trial = exp.await_first_trial(timeout=120)
    wait_for(lambda: trial.reload() or trial.latest_checkpoint_uuid, 240, "a first checkpoint")
    exp.pause()
    wait_for(lambda: exp.reload() or exp.state == client.ExperimentState.PAUSED, 120, "a pause")
    exp.activate()
    assert exp.wait(interval=0.2, timeout=300) == client.ExperimentState.COMPLETED
    trial.reload()
    lines = [str(x) for x in trial.logs()]
    assert any("resuming at epoch" in x for x in lines), lines[-20:]
    steps = [m.steps_completed for m in trial.iter_metrics("validation")]
    assert sorted(set(steps)) == [23, 46, 69]
    assert trial.run_id >= 2
    assert len(exp.list_checkpoints()) >= 1


def test_stage3_adaptive_search(det_client: client.Determined) -> None:
    exp = _run("adaptive", timeout=600)
    trials = exp.list_trials()
    assert len(trials) == 4
    assert len({json.dumps(t.hparams, sort_keys=True) for t in trials}) == 4
    assert all(0.1 <= t.hparams["learning_rate"] <= 1.0 for t in trials)
    best = exp.list_checkpoints(max_results=1)
    assert best


def test_stage4_distributed_with_the_launcher(det_client: client.Determined) -> None:
    exp = _run("distributed")
    trial = exp.list_trials()[0]
    lines = list(trial.iter_log_lines())
    ranks = {line.rank for line in lines if "training as rank" in str(line)}
    assert ranks == {0, 1}
    assert any(str(x).endswith("training as rank 1 of 2") and x.rank == 1 for x in lines)
    assert not any(str(line).startswith("[rank=") for line in lines)
    steps = [m.steps_completed for m in trial.iter_metrics("validation")]
    assert steps == [12, 24]  # each rank trains on half the data
    assert len(trial.list_checkpoints()) >= 1
