"""Trials outlive the master: a `kill -9` and a SIGTERM restart of a real master process on the
same data directory and port; the trial keeps training (run id 1, never restarted) and every
line it printed during the outages reaches the trial's logs."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from determined_sdk.proto import checkpoint_pb2, common_pb2, experiment_pb2, logs_pb2, trial_pb2
from tests.support import Stubs, single_config, trial_state, wait_for, write_model_dir

pytestmark = pytest.mark.slow

TRIAL = """
    import pathlib, time
    truth = pathlib.Path(TRUTH)
    gate = pathlib.Path(GATE)
    step = 0
    while not gate.exists():
        step += 1
        print(f"step {step}", flush=True)
        with truth.open("a") as f:
            f.write(f"{step}\\n")
        time.sleep(0.05)
    print("done", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _MasterProcess:
    def __init__(self, data_dir: pathlib.Path, port: int, log: pathlib.Path) -> None:
        self.data_dir, self.port, self.log = data_dir, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.db_url: str | None = None
        self.slots = 2
        self.main = ["-m", "master_server"]  # how the master is started (a test may wrap it)

    def start(self) -> Stubs:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *self.main,
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--slots",
                    str(self.slots),
                    *(["--db", self.db_url] if self.db_url else []),
                ],
                stderr=err,
            )
        stubs = Stubs.connect(f"127.0.0.1:{self.port}")
        wait_for(lambda: _serving(stubs), 60, "the master to serve")
        return stubs

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


def _serving(stubs: Stubs) -> bool:
    try:
        stubs.trial(1)
        return True
    except grpc.RpcError as e:
        return e.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture
def master_proc(tmp_path: pathlib.Path) -> Iterator[_MasterProcess]:
    m = _MasterProcess(tmp_path / "data", _free_port(), tmp_path / "master.log")
    yield m
    if m.proc is not None and m.proc.poll() is None:
        m.proc.send_signal(signal.SIGTERM)
        m.proc.wait(timeout=60)
    # Nothing may outlive the test: kill supervisors the last master kept.
    for pid_file in (tmp_path / "data").glob("runs/trial-*/run-*/.det/supervisor.pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _lines(stubs: Stubs, trial_id: int) -> list[str]:
    req = logs_pb2.TrialLogsRequest(trial_id=trial_id)
    return [x.message for page in stubs.logs.TrialLogs(req) for x in page.lines]


def _truth(path: pathlib.Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _start_training(
    master_proc: _MasterProcess, tmp_path: pathlib.Path
) -> tuple[Stubs, experiment_pb2.Experiment, pathlib.Path, pathlib.Path]:
    """Start the master and one TRIAL; return once it trains: (stubs, the experiment, the
    trial's ground-truth file, the gate that ends it)."""
    truth, gate = tmp_path / "truth.txt", tmp_path / "gate"
    body = TRIAL.replace("TRUTH", repr(str(truth))).replace("GATE", repr(str(gate)))
    md = write_model_dir(tmp_path / "model", {"main.py": body})
    stubs = master_proc.start()
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(lambda: len(_truth(truth)) >= 5, 60, "the trial to train")
    return stubs, exp, truth, gate


def test_kill9_and_sigterm_restarts_adopt_the_running_trial(
    master_proc: _MasterProcess, tmp_path: pathlib.Path
) -> None:
    stubs, exp, truth, gate = _start_training(master_proc, tmp_path)

    for sig in (signal.SIGKILL, signal.SIGTERM):
        master_proc.signal(sig)
        at_outage = len(_truth(truth))
        # The trial keeps training while no master runs.
        wait_for(lambda n=at_outage: len(_truth(truth)) >= n + 20, 60, "training in the outage")
        stubs = master_proc.start()
        t = stubs.trial(1)
        assert (trial_state(t), t.run_id, t.restarts) == ("RUNNING", 1, 0), sig
        now = len(_truth(truth))
        wait_for(lambda n=now: len(_truth(truth)) >= n + 5, 60, "more training")

    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=120) == "COMPLETED"
    t = stubs.trial(1)
    assert (t.run_id, t.restarts) == (1, 0)
    steps = _truth(truth)
    assert steps == list(range(1, len(steps) + 1))

    def every_line() -> Any:
        got = _lines(stubs, 1)
        want = {f"step {s}" for s in steps} | {"done"}
        return want <= set(got) and got

    got = wait_for(every_line, 60, "every printed line in the trial's logs")
    # 0 lost and 0 duplicated: a batch whose reply died with the master is stored once.
    assert sorted(x for x in got if x.startswith("step ")) == sorted(f"step {s}" for s in steps)


CORE_TRIAL = """
    import os, pathlib, time
    import core_api
    tid = os.environ["DET_TRIAL_ID"]
    truth = pathlib.Path(TRUTH) / f"trial-{tid}.txt"
    gate = pathlib.Path(GATE)
    with core_api.init() as ctx:
        step = 0
        while step < 40 or not gate.exists():
            step += 1
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
            with truth.open("a") as f:
                f.write(f"{step}\\n")
            if step % 10 == 0:
                with ctx.checkpoint.store_path({"steps_completed": step}) as (path, _):
                    (path / "w.txt").write_text(str(step))
                ctx.train.report_validation_metrics(step, {"loss": 1.0 / step})
            time.sleep(0.02)
"""


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_chaos_kill9_three_times_loses_and_duplicates_nothing(
    master_proc: _MasterProcess, tmp_path: pathlib.Path, request: pytest.FixtureRequest, db: str
) -> None:
    if db == "postgresql":
        master_proc.db_url = request.getfixturevalue("pg_schema_url")
    master_proc.slots = 4
    truth_dir, gate = tmp_path / "truth", tmp_path / "gate"
    truth_dir.mkdir()
    body = CORE_TRIAL.replace("TRUTH", repr(str(truth_dir))).replace("GATE", repr(str(gate)))
    md = write_model_dir(tmp_path / "model", {"main.py": body})
    cfg = single_config("python main.py")
    cfg["searcher"] = {
        "name": "grid",
        "metric": "loss",
        "max_length": 10,
        "max_concurrent_trials": 4,
    }
    cfg["hyperparameters"] = {"x": {"type": "categorical", "vals": [1, 2, 3, 4]}}
    stubs = master_proc.start()
    exp = stubs.create(cfg, md)

    def progress() -> int:
        files = list(truth_dir.glob("trial-*.txt"))
        return min((len(_truth(f)) for f in files), default=0) if len(files) == 4 else 0

    wait_for(lambda: progress() >= 5, 120, "four trials training")
    ckpt_root = master_proc.data_dir / "checkpoints"
    for round_ in range(3):
        if round_ == 1:
            # Once during a checkpoint: kill as a checkpoint directory appears.
            n = len(list(ckpt_root.glob("*"))) if ckpt_root.exists() else 0
            wait_for(lambda n=n: len(list(ckpt_root.glob("*"))) > n, 60, "a checkpoint")
        master_proc.signal(signal.SIGKILL)
        at = progress()
        wait_for(lambda at=at: progress() >= at + 10, 60, "training during the outage")
        stubs = master_proc.start()
        for t in stubs.trials_of(exp.id):
            assert (trial_state(t), t.run_id, t.restarts) == ("RUNNING", 1, 0), (round_, t.id)
    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=180) == "COMPLETED"
    for t in stubs.trials_of(exp.id):
        assert (t.run_id, t.restarts) == (1, 0)
        truth = _truth(truth_dir / f"trial-{t.id}.txt")
        assert truth == list(range(1, len(truth) + 1))
        req = trial_pb2.StreamMetricsRequest(trial_ids=[t.id], group="training")
        points = [p for page in stubs.trials.StreamMetrics(req) for p in page.points]
        # Every step exactly once: 0 lost, 0 duplicated; all reported by run 1.
        assert [p.steps_completed for p in points] == truth, t.id
        assert {p.trial_run_id for p in points} == {1}

    # Checkpoints written during the outages were recorded: every directory has a record, and
    # (after GC) every COMPLETED record has its directory.
    def consistent() -> bool:
        req = checkpoint_pb2.ListCheckpointsRequest(
            experiment_id=exp.id, states=list(common_pb2.CheckpointState.values())[1:]
        )
        recs = list(stubs.checkpoints.ListCheckpoints(req).checkpoints)
        done = {c.uuid for c in recs if c.state == common_pb2.CHECKPOINT_STATE_COMPLETED}
        dirs = {d.name for d in ckpt_root.iterdir() if not d.name.startswith(".")}
        return dirs <= {c.uuid for c in recs} and done == dirs

    wait_for(consistent, 60, "checkpoint records and directories to agree")


UNMANAGED = """
    import pathlib, sys, time
    import core_api
    truth = pathlib.Path(TRUTH)
    gate = pathlib.Path(GATE)
    with core_api.init(master=MASTER, experiment_name="by hand") as ctx:
        step = 0
        while step < 20 or not gate.exists():
            step += 1
            ctx.train.report_training_metrics(step, {"loss": 1.0 / step})
            with truth.open("a") as f:
                f.write(f"{step}\\n")
            time.sleep(0.02)
    print("finished", flush=True)
"""


def test_unmanaged_run_trains_through_a_master_kill9(
    master_proc: _MasterProcess, tmp_path: pathlib.Path
) -> None:
    truth, gate = tmp_path / "truth.txt", tmp_path / "gate"
    stubs = master_proc.start()
    script = tmp_path / "by_hand.py"
    script.write_text(
        textwrap.dedent(UNMANAGED)
        .replace("TRUTH", repr(str(truth)))
        .replace("GATE", repr(str(gate)))
        .replace("MASTER", repr(f"127.0.0.1:{master_proc.port}"))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DET_")}
    run = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: len(_truth(truth)) >= 5, 60, "the run to train")
        master_proc.signal(signal.SIGKILL)
        at = len(_truth(truth))
        wait_for(lambda: len(_truth(truth)) >= at + 30, 60, "training during the outage")
        stubs = master_proc.start()
        gate.touch()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert b"finished" in out
    text = err.decode()
    assert "Traceback" not in text
    assert text.count("unreachable") == 1, text  # one warning line for the outage
    steps = _truth(truth)
    req = trial_pb2.StreamMetricsRequest(trial_ids=[1], group="training")
    stored = [p.steps_completed for page in stubs.trials.StreamMetrics(req) for p in page.points]
    assert stored == steps == list(range(1, len(steps) + 1))


def test_a_run_that_ended_during_a_long_outage_is_not_rerun(
    master_proc: _MasterProcess, tmp_path: pathlib.Path
) -> None:
    stubs, exp, truth, gate = _start_training(master_proc, tmp_path)
    master_proc.signal(signal.SIGKILL)

    # The trial finishes while no master runs. Its supervisor leaves the exit code in the run
    # directory and retries the report; here it is killed, as if the outage had outlasted
    # its retries (two minutes).
    gate.touch()
    det = master_proc.data_dir / "runs" / "trial-1" / "run-1" / ".det"
    wait_for((det / "exit_code").exists, 60, "the run to end and leave its exit code")
    assert (det / "exit_code").read_text() == "0"
    os.kill(int((det / "supervisor.pid").read_text()), signal.SIGKILL)
    steps = _truth(truth)

    # The next master hands that exit on: the trial completes with its one run, not rerun.
    stubs = master_proc.start()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=120) == "COMPLETED"
    t = stubs.trial(1)
    assert (trial_state(t), t.run_id, t.restarts) == ("COMPLETED", 1, 0)
    assert _truth(truth) == steps == list(range(1, len(steps) + 1))
    assert not (det / "supervisor.pid").exists()  # handled: a later master will not see it


def test_a_run_without_this_masters_token_is_not_adopted(
    master_proc: _MasterProcess, tmp_path: pathlib.Path
) -> None:
    stubs, exp, _truth_file, gate = _start_training(master_proc, tmp_path)
    master_proc.signal(signal.SIGKILL)

    # The run directory now holds a token this database's key did not sign (as if another
    # master, with another database, had written it): its process is alive and is the
    # supervisor of that directory, but it is not this master's run.
    det = master_proc.data_dir / "runs" / "trial-1" / "run-1" / ".det"
    launch = json.loads((det / "launch.json").read_text())
    launch["env"]["DET_SESSION_TOKEN"] = "dettrial.1.1." + "0" * 64
    (det / "launch.json").write_text(json.dumps(launch))
    pid = int((det / "supervisor.pid").read_text())

    stubs = master_proc.start()
    wait_for(lambda: stubs.trial(1).run_id == 2, 60, "the trial to start run 2")
    wait_for(lambda: not _process_alive(pid), 30, "the unverified run to be killed")
    assert "its run directory does not hold this master's token" in master_proc.log.read_text()
    gate.touch()
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=120) == "COMPLETED"
    t = stubs.trial(1)
    assert (t.run_id, t.restarts) == (2, 0)


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
