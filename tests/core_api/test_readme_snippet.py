"""The README's Core API snippet runs as written: off-cluster (100 steps from ``max_length``) and
as an experiment on a real master (the searcher's 50 steps)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.core_api.test_integration import checkpoints, metrics
from tests.support import REPO, Stubs, single_config, trial_state, write_model_dir

pytest.importorskip("torch")


def snippet() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("```python\nimport torch\n\nimport core_api")
    end = text.index("```\n", start + 10)
    return text[start + len("```python\n") : end]


def test_snippet_runs_off_cluster(tmp_path: pathlib.Path) -> None:
    (tmp_path / "snippet.py").write_text(snippet())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DET_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    assert json.loads((ckpt / "metadata.json").read_text())["steps_completed"] == 100


@pytest.mark.slow
def test_snippet_runs_on_a_master(
    stubs: Stubs, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    model = write_model_dir(tmp_path / "model", {"snippet.py": snippet()})
    cfg = single_config("python snippet.py")
    cfg["searcher"] = {"name": "single", "metric": "validation_loss", "max_length": {"batches": 50}}
    exp = stubs.create(cfg, model)
    assert stubs.wait_exp(exp.id, "COMPLETED", "ERROR", timeout=120) == "COMPLETED"
    (trial,) = stubs.trials_of(exp.id)
    assert trial_state(trial) == "COMPLETED" and trial.has_searcher_metric
    assert [s for s, _ in metrics(stubs, trial.id, "training")] == [10, 20, 30, 40, 50]
    assert [s for s, _ in metrics(stubs, trial.id, "validation")] == [50]
    assert checkpoints(stubs, trial.id)[-1].steps_completed == 50
