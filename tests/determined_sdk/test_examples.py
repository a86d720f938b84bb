"""The SDK examples run end to end against a real master (they use the Core API in trials)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from master_server.app import Master

from .conftest import REPO

pytestmark = pytest.mark.slow


def _run(args: list[str], master: Master) -> str:
    env = {**os.environ, "DET_MASTER": master.address, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_custom_hp_search(sdk_master: Master) -> None:
    out = _run(["examples/sdk/custom_hp_search.py", "--quiet"], sdk_master)
    assert "Trials completed: 4" in out
    assert "Early stopping trial" in out
    report = out.split("Trials completed: 4")[1]
    best = report.split("Best validation:")[1]
    assert "'learning_rate'" in best and "0.0005" not in best


def test_notebook_walkthrough(sdk_master: Master) -> None:
    out = _run(["examples/sdk/notebook_walkthrough.py"], sdk_master)
    assert "experiment ended: ExperimentState.COMPLETED" in out
    assert "cached: TrialState.RUNNING" in out and "after reload: TrialState.COMPLETED" in out
    assert "NotFoundError: experiment 1000000 not found" in out
