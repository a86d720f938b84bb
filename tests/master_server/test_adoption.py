"""Trials outlive the master: a `kill -9` and a SIGTERM restart of a real master process on the
same data directory and port; the trial keeps training (run id 1, never restarted) and every
line it printed during the outages reaches the trial's logs."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from determined_sdk.proto import logs_pb2
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

    def start(self) -> Stubs:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "master_server",
                    "--data-dir",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    "--slots",
                    "2",
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


def test_kill9_and_sigterm_restarts_adopt_the_running_trial(
    master_proc: _MasterProcess, tmp_path: pathlib.Path
) -> None:
    truth, gate = tmp_path / "truth.txt", tmp_path / "gate"
    body = TRIAL.replace("TRUTH", repr(str(truth))).replace("GATE", repr(str(gate)))
    md = write_model_dir(tmp_path / "model", {"main.py": body})
    stubs = master_proc.start()
    exp = stubs.create(single_config("python main.py"), md)
    wait_for(lambda: len(_truth(truth)) >= 5, 60, "the trial to train")

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
    assert len([x for x in got if x.startswith("step ")]) >= len(steps)
