"""``detsdk tensorboard`` against a real master."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from determined_sdk import Experiment
from determined_sdk.cli import cli
from master_server.app import Master
from tests.support import REPO, wait_for


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


def test_starts_tensorboard_on_the_exported_trials(
    finished: Experiment, sdk_master: Master, tmp_path: pathlib.Path
) -> None:
    with socket.socket() as s:  # a free loopback port for TensorBoard
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from determined_sdk.cli import main; main()"]
    cmd += ["-m", sdk_master.address, "tensorboard", str(finished.id), "--dir", str(tmp_path)]
    cmd += ["--port", str(port), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # TensorBoard runs as its child: stop both together
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )

    def scalar_tags() -> dict[str, list[str]] | None:
        if proc.poll() is not None:
            raise AssertionError(f"detsdk tensorboard exited {proc.returncode}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5)
        except httpx.TransportError:
            return None  # not listening yet
        tags = {run: sorted(t) for run, t in r.json().items()} if r.status_code == 200 else {}
        return tags if len(tags) == 2 else None  # both trials loaded

    try:
        tags = wait_for(scalar_tags, 120, "TensorBoard to serve both trials' scalars")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert tags is not None
    runs = {f"experiment-{finished.id}/trial-{t.id}" for t in finished.list_trials()}
    assert set(tags) == runs, out
    assert all("validation/loss" in t and "training/loss" in t for t in tags.values()), tags
    assert f"TensorBoard on http://127.0.0.1:{port}/" in out


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
