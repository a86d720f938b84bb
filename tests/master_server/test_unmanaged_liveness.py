"""An unmanaged run (a script run by hand against the master) that dies does not leave its
trial RUNNING forever.

No supervisor watches such a process: ``core_api``'s preemption long poll is its heartbeat.
A run killed with ``kill -9`` stops polling and the master ends its trial in ERROR, saying why,
within seconds of its unmanaged timeout; a run that is alive but reports nothing for longer
than the timeout keeps its trial RUNNING.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from determined_sdk.proto import logs_pb2
from master_server.app import Master
from tests.support import Stubs, trial_state, wait_for

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0

SCRIPT = """
    import pathlib, sys, time
    import core_api
    ready, gate = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    with core_api.init(master=sys.argv[1], experiment_name=ready.stem) as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        ctx.train.flush()
        ready.write_text(str(ctx.info.trial.trial_id))
        # Silent from here on (no reports) until the gate opens, or until killed.
        while not gate.exists():
            if ctx.preempt.should_preempt():
                sys.exit("stopped by the master")
            time.sleep(0.05)
    print("finished", flush=True)
"""


def test_a_killed_unmanaged_run_ends_its_trial_and_a_silent_live_one_does_not(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    master = master_factory(unmanaged_timeout_s=TIMEOUT_S)
    stubs = Stubs.connect(master.address)
    script = tmp_path / "by_hand.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DET_")}
    gate = tmp_path / "gate"

    def start(name: str) -> tuple[subprocess.Popen[bytes], pathlib.Path]:
        ready = tmp_path / f"{name}.ready"
        cmd = [sys.executable, str(script), master.address, str(ready), str(gate)]
        return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE), ready

    doomed, doomed_ready = start("doomed")
    alive, alive_ready = start("alive")
    try:
        wait_for(lambda: doomed_ready.exists() and alive_ready.exists(), 60, "both runs to start")
        doomed_id, alive_id = int(doomed_ready.read_text()), int(alive_ready.read_text())
        assert trial_state(stubs.trial(doomed_id)) == "RUNNING"
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        killed_at = time.monotonic()

        wait_for(
            lambda: trial_state(stubs.trial(doomed_id)) == "ERROR",
            TIMEOUT_S + 20,
            "the killed run's trial to end",
        )
        took = time.monotonic() - killed_at
        assert took < TIMEOUT_S + 5, f"ended {took:.1f} s after the kill"
        trial = stubs.trial(doomed_id)
        assert "no heartbeat for" in trial.exit_reason, trial.exit_reason
        assert "presumed dead" in trial.exit_reason
        req = logs_pb2.TrialLogsRequest(trial_id=doomed_id)
        logged = [x.message for page in stubs.logs.TrialLogs(req) for x in page.lines]
        assert any("no heartbeat for" in m for m in logged), logged
        assert stubs.exp_state(trial.experiment_id) == "ERROR"

        # The live run reported nothing for twice the timeout and more; it still runs.
        silent_since = time.monotonic()
        wait_for(
            lambda: time.monotonic() - silent_since > 2 * TIMEOUT_S,
            10 * TIMEOUT_S,
            "twice the timeout to pass",
        )
        assert trial_state(stubs.trial(alive_id)) == "RUNNING"
        assert alive.poll() is None
        gate.touch()
        _, err = alive.communicate(timeout=60)
        assert alive.returncode == 0, err.decode()
        wait_for(lambda: trial_state(stubs.trial(alive_id)) == "COMPLETED", 30, "the live run")
    finally:
        for p in (doomed, alive):
            if p.poll() is None:
                p.kill()
    stubs.channel.close()
