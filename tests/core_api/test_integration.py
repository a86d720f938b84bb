"""The Core API through a real master: the ladder examples and the distributed one run as real
trial processes; pause/activate and crash/restart resume from checkpoints; unmanaged runs record
everything; bad input gives clear errors and loses nothing."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

import core_api
from core_api import ContextClosedError, NotFoundError
from determined_sdk.proto import checkpoint_pb2, common_pb2, logs_pb2, trial_pb2
from master_server.app import Master
from tests.support import REPO, Stubs, trial_state, wait_for

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "examples" / "core_api"


@pytest.fixture(autouse=True)
def trial_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial processes import core_api (and the supervisor) from this checkout."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    )


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of examples/core_api (without caches or local checkpoints)."""
    dst = tmp_path / "model"
    shutil.copytree(EXAMPLES, dst, ignore=shutil.ignore_patterns("__pycache__", "checkpoints"))
    return dst


def example_config(name: str, **hparams: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    cfg["hyperparameters"].update(hparams)
    if "batches" in hparams:
        cfg["searcher"]["max_length"] = {"batches": hparams["batches"]}
    return cfg


def metrics(stubs: Stubs, trial_id: int, group: str) -> list[tuple[int, dict[str, float]]]:
    out = []
    for page in stubs.trials.StreamMetrics(
        trial_pb2.StreamMetricsRequest(trial_ids=[trial_id], group=group)
    ):
        out.extend((p.steps_completed, dict(p.metrics)) for p in page.points)
    return out


def checkpoints(
    stubs: Stubs, trial_id: int, *, all_states: bool = False
) -> list[checkpoint_pb2.Checkpoint]:
    states = list(common_pb2.CheckpointState.values())[1:] if all_states else []
    resp = stubs.checkpoints.ListCheckpoints(
        checkpoint_pb2.ListCheckpointsRequest(
            trial_id=trial_id, sort_by="steps_completed", states=states
        )
    )
    return list(resp.checkpoints)


def logs(stubs: Stubs, trial_id: int) -> str:
    lines = []
    for page in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=trial_id)):
        lines.extend(line.message for line in page.lines)
    return "\n".join(lines)


def finished(stubs: Stubs, exp_id: int, timeout: float = 180.0) -> trial_pb2.Trial:
    state = stubs.wait_exp(exp_id, "COMPLETED", "ERROR", "CANCELED", timeout=timeout)
    (trial,) = stubs.trials_of(exp_id)
    if state != "COMPLETED":
        pytest.fail(f"experiment {exp_id} ended {state}; trial logs:\n{logs(stubs, trial.id)}")
    return trial


def assert_steps_unique(steps: list[int]) -> None:
    assert steps == sorted(set(steps)), f"duplicated or out-of-order steps: {steps}"


def test_ladder_examples_run_to_completion(stubs: Stubs, model_dir: pathlib.Path) -> None:
    batches = 100
    exps = {
        name: stubs.create(example_config(name, batches=batches), model_dir).id
        for name in ("0_no_api", "1_metrics_checkpoints", "2_resume", "3_searcher", "4_preemption")
    }
    for name, exp_id in exps.items():
        trial = finished(stubs, exp_id)
        assert trial_state(trial) == "COMPLETED", name
        training = metrics(stubs, trial.id, "training")
        validation = metrics(stubs, trial.id, "validation")
        ckpts = checkpoints(stubs, trial.id)
        if name == "0_no_api":
            assert training == [] and ckpts == [], name
            assert "final:" in logs(stubs, trial.id)
            continue
        assert [s for s, _ in training] == list(range(10, batches + 1, 10)), name
        assert all("loss" in m for _, m in training), name
        assert validation[-1][0] == batches and "validation_loss" in validation[-1][1], name
        assert ckpts and ckpts[-1].steps_completed == batches, name
        latest = ckpts[-1]
        assert set(latest.resources) == {"state.pt", "metadata.json"}, name
        assert json.loads(latest.metadata_json)["steps_completed"] == batches
        assert "validation_loss" in latest.validation_metrics, name
        summary = json.loads(trial.summary_metrics_json)
        assert summary["validation_metrics"]["validation_loss"]["count"] >= 1, name
        if name in ("3_searcher", "4_preemption"):
            assert trial.progress == pytest.approx(1.0), name
            assert trial.has_searcher_metric, name


def test_distributed_example(stubs: Stubs, model_dir: pathlib.Path) -> None:
    exp = stubs.create(example_config("5_distributed", batches=100), model_dir)
    trial = finished(stubs, exp.id)
    training = metrics(stubs, trial.id, "training")
    assert [s for s, _ in training] == list(range(10, 101, 10))  # the chief alone reports
    ckpts = checkpoints(stubs, trial.id)
    assert ckpts and ckpts[-1].steps_completed == 100
    text = logs(stubs, trial.id)
    assert "Traceback" not in text
    val = metrics(stubs, trial.id, "validation")
    assert val[-1][1]["accuracy"] > 0.8


def test_distributed_pause_and_resume(stubs: Stubs, model_dir: pathlib.Path) -> None:
    batches = 300
    exp = stubs.create(example_config("5_distributed", batches=batches, step_delay=0.01), model_dir)
    trial = wait_for(
        lambda: next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= 30), None),
        120,
        "the distributed trial to report 30 steps",
    )
    stubs.action(exp.id, "pause")
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 90, "the trial to pause")
    paused_at = checkpoints(stubs, trial.id)[-1].steps_completed
    assert 30 <= paused_at < batches
    text = logs(stubs, trial.id)
    assert f"rank 0: preempted at step {paused_at}" in text
    assert f"rank 1: preempted at step {paused_at}" in text  # the same answer on both ranks
    stubs.action(exp.id, "activate")
    finished(stubs, exp.id, timeout=240)
    steps = [s for s, _ in metrics(stubs, trial.id, "training")]
    assert steps == list(range(10, batches + 1, 10))
    assert "rank 1: resumed from" in logs(stubs, trial.id)


def reference_run(batches: int, hp: dict[str, Any]) -> float:
    """The same training without interruption, in this process: the final validation loss."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import digits_common as dc
    finally:
        sys.path.remove(str(EXAMPLES))
    data = dc.load_data()
    model = dc.make_model(hp["hidden_size"])
    opt = dc.make_optimizer(model, hp["lr"])
    for step in range(batches):
        dc.train_step(model, opt, *dc.batch(data, step))
    return dc.evaluate(model, data)["validation_loss"]


def test_pause_then_activate_resumes_exactly(stubs: Stubs, model_dir: pathlib.Path) -> None:
    batches = 400
    cfg = example_config("4_preemption", batches=batches, step_delay=0.01)
    exp = stubs.create(cfg, model_dir)
    trial = wait_for(
        lambda: next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= 50), None),
        120,
        "the trial to report 50 steps",
    )
    stubs.action(exp.id, "pause")
    assert stubs.wait_exp(exp.id, "PAUSED", timeout=60) == "PAUSED"
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 60, "the trial to pause")
    ckpts = checkpoints(stubs, trial.id)
    assert ckpts, "the preempted trial left no checkpoint"
    paused_at = ckpts[-1].steps_completed
    assert 50 <= paused_at < batches
    assert stubs.trial(trial.id).latest_checkpoint_uuid == ckpts[-1].uuid

    stubs.action(exp.id, "activate")
    done = finished(stubs, exp.id, timeout=240)
    assert done.run_id == 2
    steps = [s for s, _ in metrics(stubs, trial.id, "training")]
    assert_steps_unique(steps)
    assert steps == list(range(10, batches + 1, 10))
    text = logs(stubs, trial.id)
    assert f"resumed from checkpoint {ckpts[-1].uuid} at step {paused_at}" in text
    final = metrics(stubs, trial.id, "validation")[-1]
    assert final[0] == batches
    expected = reference_run(batches, cfg["hyperparameters"])
    assert final[1]["validation_loss"] == pytest.approx(expected, rel=1e-6)


CRASH_WRAPPER = """
import os
import runpy

import core_api
import digits_common

info = core_api.get_cluster_info()
if info is not None and info.trial.run_id == 1:
    real_step = digits_common.train_step
    calls = [0]

    def crashing_step(*args):
        calls[0] += 1
        if calls[0] > 150:
            os._exit(3)  # a hard crash: no cleanup, no flush
        return real_step(*args)

    digits_common.train_step = crashing_step
runpy.run_path("2_resume.py", run_name="__main__")
"""


def test_crash_restart_resumes_from_latest_checkpoint(
    stubs: Stubs, model_dir: pathlib.Path
) -> None:
    (model_dir / "crash_once.py").write_text(CRASH_WRAPPER)
    cfg = example_config("2_resume", batches=300)
    cfg["entrypoint"] = "python crash_once.py"
    cfg["max_restarts"] = 2
    exp = stubs.create(cfg, model_dir)
    trial = finished(stubs, exp.id)
    assert trial.restarts == 1 and trial.run_id == 2
    # Checkpoint GC (save_trial_latest/best) may have deleted the older ones since: list all.
    ckpts = checkpoints(stubs, trial.id, all_states=True)
    assert 100 in [c.steps_completed for c in ckpts]  # written by the run that crashed
    assert ckpts[-1].steps_completed == 300
    first = next(c for c in ckpts if c.steps_completed == 100)
    assert f"resumed from checkpoint {first.uuid} at step 100" in logs(stubs, trial.id)
    assert trial.steps_completed == 300


def test_unmanaged_run_records_metrics_and_checkpoints(
    master: Master, stubs: Stubs, tmp_path: pathlib.Path
) -> None:
    with core_api.init(
        master=master.address, experiment_name="by-hand", hparams={"lr": 0.1}
    ) as ctx:
        assert ctx.mode == "unmanaged" and ctx.info is not None
        trial_id = ctx.info.trial.trial_id
        for step in range(1, 1001):
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
        ctx.train.report_validation_metrics(1000, {"validation_loss": 0.5})
        with ctx.checkpoint.store_path({"steps_completed": 1000, "tag": "end"}) as (path, sid):
            (path / "weights.bin").write_bytes(b"\0" * 128)
        assert ctx.checkpoint.get_metadata(sid) == {"steps_completed": 1000, "tag": "end"}
        with ctx.checkpoint.restore_path(sid) as p:
            assert (p / "weights.bin").stat().st_size == 128
    trial = stubs.trial(trial_id)
    assert trial_state(trial) == "COMPLETED"
    assert json.loads(trial.hparams_json) == {"lr": 0.1}
    exp = stubs.experiment(trial.experiment_id)
    assert exp.unmanaged and exp.name == "by-hand"
    assert [s for s, _ in metrics(stubs, trial_id, "training")] == list(range(1, 1001))
    (ckpt,) = checkpoints(stubs, trial_id)
    assert ckpt.uuid == sid and ckpt.steps_completed == 1000
    assert dict(ckpt.resources)["weights.bin"] == 128
    assert ckpt.validation_metrics["validation_loss"] == 0.5
    assert (master.checkpoint_dir / sid / "weights.bin").is_file()


def test_unmanaged_bad_input(master: Master, stubs: Stubs) -> None:
    ctx = core_api.init(master=master.address, experiment_name="bad-input")
    assert ctx.info is not None
    trial_id = ctx.info.trial.trial_id
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    ctx.train.report_training_metrics(2, {"loss": 0.5})
    with pytest.raises(TypeError, match="metric 'acc' must be a number, got str"):
        ctx.train.report_training_metrics(3, {"loss": 0.1, "acc": "good"})
    with (
        pytest.raises(ValueError, match="steps_completed"),
        ctx.checkpoint.store_path({"epoch": 1}),
    ):
        pass
    with (
        pytest.raises(NotFoundError, match="checkpoint 'xyz' not found"),
        ctx.checkpoint.restore_path("xyz"),
    ):
        pass
    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(NotFoundError, match=f"checkpoint '{missing}' not found"):
        ctx.checkpoint.download(missing, "/tmp/never")
    ctx.close()
    with pytest.raises(ContextClosedError):
        ctx.train.report_training_metrics(4, {"loss": 0.1})
    assert [s for s, _ in metrics(stubs, trial_id, "training")] == [1, 2]
    assert trial_state(stubs.trial(trial_id)) == "COMPLETED"


def test_unmanaged_failure_marks_the_trial_errored(master: Master, stubs: Stubs) -> None:
    with pytest.raises(RuntimeError, match="boom"), core_api.init(master=master.address) as ctx:
        assert ctx.info is not None
        trial_id = ctx.info.trial.trial_id
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        raise RuntimeError("boom")
    assert trial_state(stubs.trial(trial_id)) == "ERROR"
    assert [s for s, _ in metrics(stubs, trial_id, "training")] == [1]


def test_best_validation_and_early_exit(stubs: Stubs, model_dir: pathlib.Path) -> None:
    (model_dir / "early.py").write_text(
        "import core_api\n"
        "with core_api.init() as ctx:\n"
        "    print('best before:', ctx.train.get_experiment_best_validation())\n"
        "    ctx.train.report_early_exit(core_api.EarlyExitReason.INVALID_HP)\n"
    )
    cfg = example_config("1_metrics_checkpoints")
    cfg["entrypoint"] = "python early.py"
    exp = stubs.create(cfg, model_dir)
    state = stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=120)
    trial = stubs.trials_of(exp.id)[0]  # the searcher may try a replacement trial
    assert "best before: None" in logs(stubs, trial.id), logs(stubs, trial.id)
    assert trial.exit_reason == "the trial reported invalid hyperparameters (INVALID_HP)", state


@pytest.mark.parametrize("script", ["3_searcher.py", "5_distributed.py"])
def test_examples_run_off_cluster(
    tmp_path: pathlib.Path, model_dir: pathlib.Path, script: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DET_")}
    proc = subprocess.run(
        [sys.executable, script],
        cwd=model_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation metrics at step 300" in proc.stderr
    saved = list((model_dir / "checkpoints").iterdir())
    assert len(saved) == 1 and (saved[0] / "state.pt").is_file()


def test_asha_promotion_continues_the_same_run(stubs: Stubs, model_dir: pathlib.Path) -> None:
    cfg = example_config("3_searcher")
    cfg["hyperparameters"]["lr"] = {"type": "log", "base": 10, "minval": -2, "maxval": -1}
    cfg["searcher"] = {
        "name": "adaptive_asha",
        "metric": "validation_loss",
        "smaller_is_better": True,
        "max_length": {"batches": 200},
        "max_trials": 2,
        "max_rungs": 2,
        "divisor": 2,
        "mode": "aggressive",
    }
    exp = stubs.create(cfg, model_dir)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=240) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 2 and all(trial_state(t) == "COMPLETED" for t in trials)
    val_steps = {t.id: [s for s, _ in metrics(stubs, t.id, "validation")] for t in trials}
    promoted = [t for t in trials if val_steps[t.id] == [100, 200]]
    assert promoted, val_steps  # the first trial to reach rung 1 is always promoted
    for t in promoted:
        assert t.run_id == 1  # the longer op arrived in the same process
        steps = [s for s, _ in metrics(stubs, t.id, "training")]
        assert steps == list(range(10, 201, 10))
        assert [c.steps_completed for c in checkpoints(stubs, t.id)][-1] == 200
    for t in trials:
        assert val_steps[t.id] in ([100], [100, 200])


def test_digits_search_example(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    model = tmp_path / "digits"
    shutil.copytree(
        REPO / "examples" / "digits", model, ignore=shutil.ignore_patterns("__pycache__")
    )
    cfg = yaml.safe_load((model / "search.yaml").read_text())
    cfg["searcher"]["max_trials"] = 2
    cfg["searcher"]["max_length"] = {"batches": 200}
    exp = stubs.create(cfg, model)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=240) == "COMPLETED"
    trials = stubs.trials_of(exp.id)
    assert len(trials) == 2
    for t in trials:
        assert trial_state(t) == "COMPLETED"
        hp = json.loads(t.hparams_json)
        assert 10**-2.5 <= hp["lr"] <= 10**-0.5 and hp["hidden_size"] in (16, 32, 64, 128)
        assert [s for s, _ in metrics(stubs, t.id, "validation")] == [200]
        assert checkpoints(stubs, t.id)[-1].steps_completed == 200
        assert t.has_searcher_metric


def test_lightning_example_pause_and_resume(stubs: Stubs, model_dir: pathlib.Path) -> None:
    pytest.importorskip("lightning.pytorch")
    batches = 400
    exp = stubs.create(example_config("lightning_digits", batches=batches), model_dir)
    trial = wait_for(
        lambda: next((t for t in stubs.trials_of(exp.id) if t.steps_completed >= 20), None),
        120,
        "the Lightning trial to report 20 steps",
    )
    stubs.action(exp.id, "pause")
    wait_for(lambda: trial_state(stubs.trial(trial.id)) == "PAUSED", 90, "the trial to pause")
    stubs.action(exp.id, "activate")
    done = finished(stubs, exp.id, timeout=240)
    assert done.run_id == 2
    ckpts = checkpoints(stubs, trial.id)
    assert ckpts[-1].steps_completed == batches
    assert "model.ckpt" in ckpts[-1].resources
    val = metrics(stubs, trial.id, "validation")
    assert val[-1][0] == batches and "val_loss" in val[-1][1]
    steps = [s for s, _ in metrics(stubs, trial.id, "training")]
    assert_steps_unique(steps)
    assert done.has_searcher_metric
