"""Unmanaged runs: a script run by hand records its hparams, output, progress and checkpoints."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from determined_sdk import client
from master_server.app import Master
from tests.support import REPO

from .conftest import HERE


def test_a_script_run_by_hand_is_recorded(
    det_client: client.Determined, master: Master, tmp_path: pathlib.Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DET_")},
        "DET_MASTER": master.address,
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "unmanaged" / "by_hand.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hello from an unmanaged run" in done.stdout  # the terminal still shows it

    (exp,) = client.list_experiments(name="by-hand")
    assert exp.unmanaged and exp.state == client.ExperimentState.COMPLETED
    (trial,) = exp.list_trials()
    assert trial.hparams == {"lr": 0.1, "layers": 2}
    lines = list(trial.logs())
    for text in ("hello from an unmanaged run", "a line on stderr", f"TRIAL {trial.id}"):
        assert f"{text}\n" in lines, lines
    assert any(x.endswith("by_hand: a logging line\n") for x in lines)
    assert {x.stream for x in trial.iter_log_lines(search="a line on stderr")} == {"stderr"}
    assert trial.progress == 1.0
    (ckpt,) = exp.list_checkpoints()  # the default sort works without a searcher metric
    assert ckpt.steps_completed == 10 and ckpt.validation_metrics == {"acc": 0.9}
    assert [c.uuid for c in trial.list_checkpoints()] == [ckpt.uuid]
