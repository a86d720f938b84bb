"""On-cluster and unmanaged modes against the fake master.

Covers the cluster info, checkpoints, the searcher and preemption.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import pytest

import core_api
from core_api import NotFoundError
from tests.core_api.fake_master import FakeMaster


def test_cluster_info(on_cluster: Callable[..., Any], fake: FakeMaster) -> None:
    on_cluster(latest_checkpoint="abc", hparams={"lr": 0.5, "n": 3}, user_data={"k": 1})
    info = core_api.get_cluster_info()
    assert info is not None
    assert info.trial.trial_id == fake.state.trial_id
    assert info.trial.experiment_id == fake.state.experiment_id
    assert info.trial.hparams == {"lr": 0.5, "n": 3}
    assert info.trial.trial_seed == 5 and info.trial.user_data == {"k": 1}
    assert info.latest_checkpoint == "abc" and info.master_url == fake.address
    with core_api.init() as ctx:
        assert ctx.info == info and ctx.mode == "cluster"
        assert ctx.searcher.get_configured_units() == "batches"


def test_bad_cluster_info_is_clear(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "ci.json"
    p.write_text(json.dumps({"master": "x"}))
    monkeypatch.setenv("DET_CLUSTER_INFO", str(p))
    with pytest.raises(ValueError, match="DET_CLUSTER_INFO"):
        core_api.get_cluster_info()


def test_checkpoints_are_reported(on_cluster: Callable[..., Any], fake: FakeMaster) -> None:
    on_cluster()
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(5, {"loss": 1.0})
        with ctx.checkpoint.store_path({"steps_completed": 5, "epoch": 1}) as (path, sid):
            (path / "w.bin").write_bytes(b"x" * 10)
            (path / "d").mkdir()
            (path / "d" / "o.bin").write_bytes(b"y" * 3)
        assert path == pathlib.Path(fake.state.storage_path).resolve() / sid
        names = [n for n, _ in fake.state.calls]
        # metrics before the checkpoint are stored before the checkpoint is reported
        assert names.index("ReportMetrics") < names.index("ReportCheckpoint")
        c = fake.state.checkpoints[sid]
        assert c.steps_completed == 5 and c.trial_id == fake.state.trial_id
        meta_size = (path / "metadata.json").stat().st_size
        assert dict(c.resources) == {"w.bin": 10, "d/o.bin": 3, "metadata.json": meta_size}
        assert json.loads(c.metadata_json) == {"steps_completed": 5, "epoch": 1}
        assert ctx.checkpoint.get_metadata(sid) == {"steps_completed": 5, "epoch": 1}
        with ctx.checkpoint.restore_path(sid) as p:
            assert (p / "w.bin").read_bytes() == b"x" * 10
        with pytest.raises(NotFoundError, match="checkpoint 'xyz' not found"):
            ctx.checkpoint.get_metadata("xyz")
        with (
            pytest.raises(NotFoundError, match="checkpoint 'xyz' not found"),
            ctx.checkpoint.restore_path("xyz"),
        ):
            pass
        with pytest.raises(NotFoundError, match="checkpoint 'xyz' not found"):
            ctx.checkpoint.download("xyz", path.parent / "out")
        with pytest.raises(NotFoundError, match="checkpoint 'xyz' not found"):
            ctx.checkpoint.delete("xyz")
        ctx.checkpoint.delete(sid)
        assert sid not in fake.state.checkpoints


def test_searcher_ops_with_promotion(on_cluster: Callable[..., Any], fake: FakeMaster) -> None:
    on_cluster()
    fake.set(lambda st: st.ops.append(10))
    seen = []
    with core_api.init() as ctx:
        ctx.searcher._poll_timeout = 0.2
        for op in ctx.searcher.operations():
            seen.append(op.length)
            ctx.train.report_validation_metrics(op.length, {"loss": 1.0 / op.length})
            op.report_progress(op.length)
            op.report_completed(1.0 / op.length)
            if op.length == 10:
                fake.set(lambda st: st.ops.append(30))  # promoted (ASHA)
            else:
                fake.set(lambda st: setattr(st, "searcher_done", True))
    assert seen == [10, 30]
    assert fake.state.completed == [(10, pytest.approx(0.1)), (30, pytest.approx(1 / 30))]
    names = [n for n, _ in fake.state.calls]
    # the validation metrics are stored before the op is completed
    assert names.index("ReportMetrics") < names.index("CompleteSearcherOperation")
    assert 1.0 in fake.state.progress


def test_searcher_long_poll_waits_for_an_op(
    on_cluster: Callable[..., Any], fake: FakeMaster
) -> None:
    on_cluster()
    with core_api.init() as ctx:
        ctx.searcher._poll_timeout = 0.1
        ops = ctx.searcher.operations()
        import threading

        threading.Timer(0.5, lambda: fake.set(lambda st: st.ops.append(4))).start()
        op = next(ops)
        assert op.length == 4
        polls = [r for n, r in fake.state.calls if n == "GetSearcherOperation"]
        assert len(polls) >= 2 and polls[0].timeout_seconds == pytest.approx(0.1)
        op.report_completed(0.0)
        fake.set(lambda st: setattr(st, "searcher_done", True))
        assert list(ops) == []


def test_preemption(on_cluster: Callable[..., Any], fake: FakeMaster) -> None:
    on_cluster()
    with core_api.init() as ctx:
        assert ctx.preempt.should_preempt() is False
        fake.wait(lambda st: any(n == "WatchPreemption" for n, _ in st.calls))
        fake.set(lambda st: setattr(st, "preempt", True))
        deadline = time.monotonic() + 10
        while not ctx.preempt.should_preempt():
            assert time.monotonic() < deadline, "preemption not seen"
            time.sleep(0.01)  # polling a cached flag, bounded by the deadline
        assert ctx.preempt.should_preempt() is True
    assert fake.state.acks == 1


def test_preemption_without_auto_ack(on_cluster: Callable[..., Any], fake: FakeMaster) -> None:
    on_cluster()
    fake.set(lambda st: setattr(st, "preempt", True))
    with core_api.init() as ctx:
        deadline = time.monotonic() + 10
        while not ctx.preempt.should_preempt(auto_ack=False):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert fake.state.acks == 0
        ctx.preempt.acknowledge_preemption_signal()
        ctx.preempt.acknowledge_preemption_signal()
    assert fake.state.acks == 1


def test_close_does_not_wait_for_the_long_poll(
    on_cluster: Callable[..., Any], fake: FakeMaster
) -> None:
    on_cluster()
    ctx = core_api.init()
    fake.wait(lambda st: any(n == "WatchPreemption" for n, _ in st.calls))
    t0 = time.monotonic()
    ctx.close()
    assert time.monotonic() - t0 < 3


def test_unmanaged_mode(fake: FakeMaster, tmp_path: pathlib.Path) -> None:
    with core_api.init(master=fake.address, experiment_name="nb", hparams={"lr": 1}) as ctx:
        assert ctx.mode == "unmanaged"
        assert ctx.info is not None and ctx.info.trial.trial_id == fake.state.trial_id
        assert ctx.info.trial.hparams == {"lr": 1}
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        with ctx.checkpoint.store_path({"steps_completed": 1}) as (path, sid):
            (path / "f").write_text("x")
        assert path.parent == pathlib.Path(fake.state.storage_path).resolve()
        assert [op.length for op in _run_ops(ctx)] == [1]
        assert ctx.preempt.should_preempt() is False
    config, hparams = fake.state.unmanaged[0]
    assert json.loads(config) == {"name": "nb"} and json.loads(hparams) == {"lr": 1}
    assert sid in fake.state.checkpoints and len(fake.reports()) == 1
    assert fake.state.exits == [(fake.state.trial_id, 1, 0)]


def test_unmanaged_mode_from_env_and_failure_exit(
    fake: FakeMaster, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("DET_MASTER", fake.address)
    with pytest.raises(KeyError), core_api.init(checkpoint_storage=tmp_path / "mine") as ctx:
        with ctx.checkpoint.store_path({"steps_completed": 1}) as (path, _sid):
            pass
        assert path.parent == (tmp_path / "mine").resolve()
        raise KeyError("boom")
    config = json.loads(fake.state.unmanaged[0][0])
    assert config["checkpoint_storage"]["path"] == str((tmp_path / "mine").resolve())
    assert fake.state.exits == [(fake.state.trial_id, 1, 1)]


def _run_ops(ctx: core_api.Context) -> list[core_api.SearcherOperation]:
    out = []
    for op in ctx.searcher.operations():
        out.append(op)
        op.report_completed(0.0)
    return out


def test_unclosed_context_is_flushed_at_exit(fake: FakeMaster) -> None:
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[2]
    script = (
        "import core_api\n"
        f"ctx = core_api.init(master={fake.address!r})\n"
        "for i in range(500):\n"
        "    ctx.train.report_training_metrics(i, {'x': 1.0})\n"
    )
    subprocess.run(
        [sys.executable, "-c", script], check=True, timeout=60, env={"PYTHONPATH": str(repo)}
    )
    assert len(fake.reports()) == 500
    assert fake.state.exits == [(fake.state.trial_id, 1, 0)]
