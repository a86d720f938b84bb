"""Signals reach the run they were meant for; kill/cancel are idempotent; clean end states.

All through a real master with real trial processes.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grpc
import pytest

from determined_sdk.proto import trial_pb2
from master_server.engine import preemption
from tests.support import Stubs, single_config, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow


def _model(tmp_path: pathlib.Path, body: str) -> pathlib.Path:
    return write_model_dir(tmp_path / "model", {"main.py": body})


def test_late_grace_kill_never_touches_a_newer_run(
    master_factory: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run 1 ignores preemption *and* SIGTERM, so the pause ends with the SIGKILL that follows
    # the SIGTERM. Run 2 (after activate) must outlive that SIGKILL's timer, if it were still
    # aimed at "the trial's current run", it would kill run 2 and the trial would restart.
    monkeypatch.setattr(preemption, "KILL_AFTER_TERM_S", 2.0)
    master = master_factory(preempt_grace_s=0.5)
    stubs = Stubs.connect(master.address)
    done = tmp_path / "run2-done"
    body = f"""
        import os, signal, time, pathlib
        run = os.environ["DET_RUN_ID"]
        print("run", run, flush=True)
        if run == "1":
            signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
            time.sleep(300)
        else:
            # Outlive run 1's kill timer by a wide margin, then finish well.
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                time.sleep(0.1)
            pathlib.Path({str(done)!r}).write_text("ok")
    """
    exp = stubs.create(single_config("python main.py"), _model(tmp_path, body))
    wait_for(lambda: stubs.trial(1).state and trial_state(stubs.trial(1)) == "RUNNING", 30)
    stubs.action(exp.id, "pause")
    # The SIGTERM is ignored; wait for the SIGKILL to end run 1 (trial PAUSED) ...
    wait_for(lambda: trial_state(stubs.trial(1)) == "PAUSED", 30, "trial paused")
    # ... and activate at once: pause/terminate from run 1 happened, a timer may still be armed.
    stubs.action(exp.id, "activate")
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=60) == "COMPLETED"
    t = stubs.trial(1)
    assert (t.run_id, t.restarts, trial_state(t)) == (2, 0, "COMPLETED")
    assert done.read_text() == "ok"


def test_terminate_and_kill_name_the_run(master_factory: Any, tmp_path: pathlib.Path) -> None:
    master = master_factory()
    stubs = Stubs.connect(master.address)
    body = "import time\ntime.sleep(300)\n"
    cfg = single_config("python main.py")
    cfg["max_restarts"] = 1
    exp = stubs.create(cfg, _model(tmp_path, body))
    wait_for(lambda: trial_state(stubs.trial(1)) == "RUNNING", 30, "running")
    # RUNNING is stored before the launch thread starts the run: wait for the start too.
    launches = master.parts["experiments"].state.launches
    wait_for(lambda: launches.pending() == 0, 30, "the run to be started")
    rm = master.parts["rm"]
    # Orders for a run that is not the live one are refused and leave the live one alone.
    assert rm.terminate(1, 2) is False
    assert rm.kill(1, 7) is False
    assert trial_state(stubs.trial(1)) == "RUNNING"
    assert rm.kill(1, 1) is True
    # A killed run is a failure: the trial restarts as run 2.
    wait_for(lambda: stubs.trial(1).run_id == 2, 30, "run 2")
    stubs.action(exp.id, "kill")
    assert stubs.wait_exp(exp.id, "CANCELED", "ERROR") == "CANCELED"


def test_seed002_double_kill_is_a_noop_and_the_experiment_ends_canceled(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    master = master_factory()
    stubs = Stubs.connect(master.address)
    exp = stubs.create(
        single_config("python main.py"), _model(tmp_path, "import time\ntime.sleep(300)\n")
    )
    wait_for(lambda: trial_state(stubs.trial(1)) == "RUNNING", 30, "running")
    first = stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=1))
    assert trial_state(first.trial) in ("RUNNING", "CANCELED")
    # Killing the only trial ends the experiment CANCELED, not ERROR.
    assert stubs.wait_exp(exp.id, "CANCELED", "ERROR", "COMPLETED") == "CANCELED"
    # The monitoring loop's stale second kill returns normally; nothing changes.
    again = stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=1))
    assert trial_state(again.trial) == "CANCELED"
    # Kill and cancel of the ended experiment are no-ops too.
    for action in ("kill", "cancel"):
        assert stubs.action(exp.id, action).state == stubs.experiment(exp.id).state
    assert stubs.exp_state(exp.id) == "CANCELED"
    # A trial id that does not exist is still NOT_FOUND.
    with pytest.raises(grpc.RpcError) as ei:
        stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=99))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert "99" in ei.value.details()


def test_kill_every_remaining_trial_cancels_the_experiment(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    master = master_factory(slots=2)
    stubs = Stubs.connect(master.address)
    cfg = single_config("python main.py")
    cfg["searcher"] = {
        "name": "grid",
        "metric": "loss",
        "max_length": 10,
        "max_concurrent_trials": 2,
    }
    cfg["hyperparameters"] = {"x": {"type": "categorical", "vals": [1, 2]}}
    exp = stubs.create(cfg, _model(tmp_path, "import time\ntime.sleep(300)\n"))
    wait_for(
        lambda: [trial_state(t) for t in stubs.trials_of(exp.id)] == ["RUNNING", "RUNNING"],
        30,
        "two running trials",
    )
    for t in stubs.trials_of(exp.id):
        stubs.trials.KillTrial(trial_pb2.KillTrialRequest(trial_id=t.id))
    assert stubs.wait_exp(exp.id, "CANCELED", "ERROR", "COMPLETED") == "CANCELED"
    assert [trial_state(t) for t in stubs.trials_of(exp.id)] == ["CANCELED", "CANCELED"]


def test_max_idle_fails_a_hung_trial_and_restarts_it_with_the_reason_in_its_logs(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    from determined_sdk.proto import logs_pb2

    master = master_factory()
    stubs = Stubs.connect(master.address)
    body = """
        import os, time
        import core_api
        with core_api.init() as ctx:
            ctx.train.report_training_metrics(1, {"loss": 1.0})
            if ctx.info.trial.run_id == 1:
                time.sleep(300)  # hangs: no progress, no exit
    """
    cfg = single_config("python main.py")
    cfg["max_idle"] = 2
    cfg["max_restarts"] = 1
    exp = stubs.create(cfg, _model(tmp_path, body))
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=90) == "COMPLETED"
    t = stubs.trial(1)
    assert (t.run_id, t.restarts) == (2, 1)
    lines = [
        x.message
        for page in stubs.logs.TrialLogs(logs_pb2.TrialLogsRequest(trial_id=1))
        for x in page.lines
    ]
    assert any("no progress reported for 2 s (max_idle)" in x for x in lines), lines


def test_max_idle_must_be_positive(stubs: Stubs, tmp_path: pathlib.Path) -> None:
    cfg = single_config("python main.py")
    cfg["max_idle"] = -1
    with pytest.raises(grpc.RpcError) as ei:
        stubs.create(cfg, _model(tmp_path, "print(1)\n"))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_idle" in ei.value.details()


def test_seed002_monitoring_loop_with_stale_state_through_the_sdk(
    master_factory: Any, tmp_path: pathlib.Path
) -> None:
    from determined_sdk import Determined

    master = master_factory()
    stubs = Stubs.connect(master.address)
    exp = stubs.create(
        single_config("python main.py"), _model(tmp_path, "import time\ntime.sleep(300)\n")
    )
    wait_for(lambda: trial_state(stubs.trial(1)) == "RUNNING", 30, "running")
    with Determined(master.address) as det:
        trial = det.get_trial(1)  # cached state: RUNNING
        experiment = det.get_experiment(exp.id)
        trial.kill()
        assert stubs.wait_exp(exp.id, "CANCELED", "ERROR", "COMPLETED") == "CANCELED"
        # The loop acts on its stale copy again: every call returns normally.
        trial.kill()
        experiment.kill()
        experiment.cancel()
        trial.reload()
        experiment.reload()
        assert trial.state.value == "CANCELED"
        assert experiment.state.value == "CANCELED"
