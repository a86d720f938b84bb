"""``detsdk tensorboard`` against a real master."""

from __future__ import annotations

import pathlib
import sys

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from determined_sdk import Experiment
from determined_sdk.cli import cli
from master_server.app import Master


def test_export_only(finished: Experiment, sdk_master: Master, tmp_path: pathlib.Path) -> None:
    args = ["-m", sdk_master.address, "tensorboard", str(finished.id), "--export-only"]
    r = CliRunner().invoke(cli, [*args, "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert f"Wrote 2 trial(s) to {tmp_path}" in r.stdout
    for t in finished.list_trials():
        acc = EventAccumulator(str(tmp_path / f"experiment-{finished.id}" / f"trial-{t.id}"))
        acc.Reload()
        loss = [(e.step, e.value) for e in acc.Scalars("validation/loss")]
        want = [(m.steps_completed, m.metrics["loss"]) for m in t.iter_metrics("validation")]
        assert [s for s, _ in loss] == [s for s, _ in want]
        assert [v for _, v in loss] == pytest.approx([v for _, v in want])


def test_errors(
    sdk_master: Master, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["-m", sdk_master.address, "tensorboard"]
    r = CliRunner().invoke(cli, [*base, "424242", "--export-only", "--dir", str(tmp_path)])
    assert r.exit_code == 1 and "424242" in r.stderr
    r = CliRunner().invoke(cli, base)
    assert r.exit_code == 2 and "EXPERIMENT_IDS" in r.output
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
    r = CliRunner().invoke(cli, [*base, "1", "--export-only", "--dir", str(tmp_path)])
    assert r.exit_code == 1 and "determined-sdk[tensorboard]" in r.stderr
