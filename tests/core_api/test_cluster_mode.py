"""On-cluster and unmanaged modes against a real master (cluster info, checkpoints, the
searcher, preemption, unmanaged trials).

On-cluster tests use ``cluster_trial``: a real trial whose process waits on a gate while this
test process, pointed at the launcher's cluster info, plays its training code. ``wire`` records
the calls core_api makes, so the tests can check their order as well as what the master stored.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import grpc
import pytest

import core_api
from core_api import NotFoundError, _channel, _context
from determined_sdk.metrics_wire import pack_reports
from determined_sdk.proto import (
    checkpoint_pb2,
    common_pb2,
    experiment_pb2,
    searcher_pb2,
    trial_pb2,
)
from master_server.app import Master
from tests.core_api.live_trial import LiveTrial
from tests.core_api.wire import Wire
from tests.support import REPO, Stubs, trial_state, wait_for

Make = Callable[..., LiveTrial]


def test_cluster_info(cluster_trial: Make, master: Master) -> None:
    t = cluster_trial(latest_checkpoint="abc", hyperparameters={"lr": 0.5, "n": 3}, data={"k": 1})
    info = core_api.get_cluster_info()
    assert info is not None
    assert info.trial.trial_id == t.trial_id
    assert info.trial.experiment_id == t.experiment_id
    assert info.trial.hparams == {"lr": 0.5, "n": 3}
    assert info.trial.trial_seed == t.info["trial_seed"] and info.trial.user_data == {"k": 1}
    assert info.trial.run_id == 1 and info.slots_per_trial == 1
    assert info.latest_checkpoint == "abc" and info.master_url == master.address
    storage = info.checkpoint_storage
    assert storage["type"] == "shared_fs" and storage["path"] == str(master.checkpoint_dir)
    with core_api.init() as ctx:
        assert ctx.info == info and ctx.mode == "cluster"
        assert ctx.searcher.get_configured_units() == "batches"


def test_bad_cluster_info_is_clear(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "ci.json"
    p.write_text(json.dumps({"master": "x"}))
    monkeypatch.setenv("DET_CLUSTER_INFO", str(p))
    with pytest.raises(ValueError, match="DET_CLUSTER_INFO"):
        core_api.get_cluster_info()


def get_checkpoint(stubs: Stubs, uuid: str) -> checkpoint_pb2.Checkpoint:
    resp = stubs.checkpoints.GetCheckpoint(checkpoint_pb2.GetCheckpointRequest(uuid=uuid))
    return cast(checkpoint_pb2.Checkpoint, resp.checkpoint)


def test_checkpoints_are_reported(
    cluster_trial: Make, master: Master, stubs: Stubs, wire: Wire
) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(5, {"loss": 1.0})
        with ctx.checkpoint.store_path({"steps_completed": 5, "epoch": 1}) as (path, sid):
            (path / "w.bin").write_bytes(b"x" * 10)
            (path / "d").mkdir()
            (path / "d" / "o.bin").write_bytes(b"y" * 3)
        assert path == master.checkpoint_dir.resolve() / sid
        # metrics before the checkpoint are stored before the checkpoint is reported ...
        assert wire.first("ReportMetrics").answered_before(wire.first("ReportCheckpoint"))
        c = get_checkpoint(stubs, sid)
        # ... so the master attached them to it
        assert dict(c.training_metrics) == {"loss": 1.0}
        assert c.steps_completed == 5 and c.trial_id == t.trial_id
        assert c.state == common_pb2.CHECKPOINT_STATE_COMPLETED
        assert t.trial().latest_checkpoint_uuid == sid
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
        # The master keeps the record (DELETED) and removes the files.
        assert get_checkpoint(stubs, sid).state == common_pb2.CHECKPOINT_STATE_DELETED
        assert not path.exists()


def test_searcher_ops_with_promotion(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial(custom=True, ops=[10])
    seen = []
    with core_api.init() as ctx:
        ctx.searcher._poll_timeout = 0.2
        for op in ctx.searcher.operations():
            seen.append(op.length)
            ctx.train.report_validation_metrics(op.length, {"loss": 1.0 / op.length})
            op.report_progress(op.length)
            op.report_completed(1.0 / op.length)
            if op.length == 10:
                t.validate_after(30)  # promoted (as ASHA does)
            else:
                t.post({"type": "stop", "request_id": "r1"})  # the searcher is done with it
    assert seen == [10, 30]
    completed = [(e["length"], e["metric"]) for e in t.events() if e["type"] == "validation"]
    assert completed == [(10, pytest.approx(0.1)), (30, pytest.approx(1 / 30))]
    # the validation metrics are stored before the op is completed: sent before it, or with it
    for complete, length in zip(wire.calls("CompleteSearcherOperation"), (10, 30), strict=True):
        before = [c.request for c in wire.calls("ReportMetrics") if c.answered_before(complete)]
        steps = [s for r in (*before, complete.request.metrics) for s in r.steps_completed]
        assert length in steps
    assert [s for _, s, _, _ in t.metrics("validation")] == [10, 30]
    assert 1.0 in [r.progress for r in wire.requests("ReportProgress")]
    assert t.trial().progress == pytest.approx(1.0)


@pytest.fixture
def sender_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics sender sends only when asked (flush, a full batch), never on a timer."""
    made = core_api.TrainContext.__init__

    def patient(self: core_api.TrainContext, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **{**kwargs, "flush_interval": 3600.0})

    monkeypatch.setattr(core_api.TrainContext, "__init__", patient)


def test_the_last_metrics_go_with_the_completion_and_the_end_is_known(
    cluster_trial: Make, wire: Wire, sender_waits: None
) -> None:
    t = cluster_trial()  # a single search of 10 batches: one op
    with core_api.init() as ctx:
        lengths = []
        for op in ctx.searcher.operations():
            lengths.append(op.length)
            ctx.train.report_training_metrics(op.length, {"loss": 0.7})
            ctx.train.report_validation_metrics(op.length, {"loss": 0.5})
            op.report_completed(0.5)
    assert lengths == [10]
    # One call stored the pending metrics and completed the op; its answer said the searcher
    # has no more work for the trial, so the trial did not ask again.
    (complete,) = wire.requests("CompleteSearcherOperation")
    assert list(complete.metrics.groups) == ["training", "validation"]
    assert list(complete.metrics.steps_completed) == [10, 10]
    assert complete.metrics.trial_id == t.trial_id and complete.metrics.batch_id
    assert wire.calls("ReportMetrics") == []
    assert len(wire.calls("GetSearcherOperation")) == 1
    assert [(s, m) for _, s, m, _ in t.metrics("validation")] == [(10, {"loss": 0.5})]
    assert [(s, m) for _, s, m, _ in t.metrics("training")] == [(10, {"loss": 0.7})]
    t.release()
    assert t.wait_settled() == "COMPLETED"
    assert t.trial().exit_reason == "finished training"


class _OlderMaster(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Drops what a master older than the field would not read: the metrics sent with a
    completion (its answer then says they were not stored)."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method.endswith("/CompleteSearcherOperation"):
            request = searcher_pb2.CompleteSearcherOperationRequest(
                trial_id=request.trial_id,
                length=request.length,
                searcher_metric=request.searcher_metric,
            )
        return continuation(details, request)


def test_metrics_a_master_did_not_store_with_the_completion_are_sent_after_it(
    cluster_trial: Make, wire: Wire, sender_waits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_channel, "_TEST_INTERCEPTORS", [wire, _OlderMaster()])
    t = cluster_trial()
    with core_api.init() as ctx:
        for op in ctx.searcher.operations():
            ctx.train.report_validation_metrics(op.length, {"loss": 0.5})
            op.report_completed(0.5)
    (complete,) = wire.calls("CompleteSearcherOperation")
    (resent,) = wire.calls("ReportMetrics")
    assert complete.answered_before(resent)
    assert resent.request == complete.request.metrics  # the same batch (and batch id)
    assert [(s, m) for _, s, m, _ in t.metrics("validation")] == [(10, {"loss": 0.5})]


def test_metrics_sent_with_a_completion_are_checked(cluster_trial: Make) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        ops = ctx.searcher.operations()
        op = next(ops)
        complete = ctx._session.searcher.CompleteSearcherOperation  # type: ignore[union-attr]
        cases = [
            (
                pack_reports(t.trial_id + 1, "b", [("validation", 10, {"loss": 1.0}, 0.0)]),
                "metrics.trial_id",
            ),
            (
                pack_reports(t.trial_id, "", [("validation", 10, {"loss": 1.0}, 0.0)]),
                "metrics.batch_id",
            ),
        ]
        for metrics, needle in cases:
            with pytest.raises(grpc.RpcError) as ei:
                complete(
                    searcher_pb2.CompleteSearcherOperationRequest(
                        trial_id=t.trial_id, length=op.length, searcher_metric=1.0, metrics=metrics
                    )
                )
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in ei.value.details()
        # Refused as a whole: neither stored nor completed.
        assert t.metrics() == []
        op.report_completed(1.0)
        assert list(ops) == []
    assert [s for _, s, _, _ in t.metrics("validation")] == []


def test_searcher_long_poll_waits_for_an_op(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial(custom=True, ops=[2])
    with core_api.init() as ctx, concurrent.futures.ThreadPoolExecutor(1) as pool:
        ctx.searcher._poll_timeout = 0.1
        ops = ctx.searcher.operations()
        first = next(ops)
        assert first.length == 2
        first.report_completed(0.0)
        before = len(wire.calls("GetSearcherOperation"))
        waiting = pool.submit(next, ops)
        # The master has no op for the trial: the chief keeps long-polling until it has one.
        wire.wait_sent("GetSearcherOperation", before + 2)
        assert not waiting.done()
        t.validate_after(4)
        op = waiting.result(timeout=30)
        assert op.length == 4
        polls = wire.requests("GetSearcherOperation")[before:]
        assert len(polls) >= 2
        assert all(p.timeout_seconds == pytest.approx(0.1) for p in polls)
        op.report_completed(0.0)
        t.post({"type": "stop", "request_id": "r1"})
        assert list(ops) == []


def test_preemption(cluster_trial: Make, stubs: Stubs, wire: Wire) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        assert ctx.preempt.should_preempt() is False
        wire.wait_sent("WatchPreemption")
        stubs.action(t.experiment_id, "pause")
        wait_for(ctx.preempt.should_preempt, 30, "the preemption signal")
        assert ctx.preempt.should_preempt() is True
    assert len(wire.calls("AckPreemption")) == 1
    t.release()
    assert t.wait_settled() == "PAUSED"  # preempted by a pause, then exit 0: PAUSED


def test_preemption_without_auto_ack(cluster_trial: Make, stubs: Stubs, wire: Wire) -> None:
    t = cluster_trial()
    stubs.action(t.experiment_id, "pause")
    with core_api.init() as ctx:
        wait_for(lambda: ctx.preempt.should_preempt(auto_ack=False), 30, "the preemption signal")
        assert wire.calls("AckPreemption") == []
        ctx.preempt.acknowledge_preemption_signal()
        ctx.preempt.acknowledge_preemption_signal()
    assert len(wire.calls("AckPreemption")) == 1


def test_the_first_preemption_poll_waits_for_a_question(
    cluster_trial: Make, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (By default it waits a second at most; here as long as the test lasts.)
    monkeypatch.setattr(_context, "FIRST_POLL_DELAY_S", 3600.0)
    cluster_trial()
    with core_api.init():
        pass  # a trial that ends before it asks: no long poll for the master to hold
    assert wire.calls("WatchPreemption") == []
    with core_api.init() as ctx:
        assert ctx.preempt.should_preempt() is False
        wire.wait_sent("WatchPreemption")  # the question starts the polls at once


def test_an_unmanaged_run_polls_preemption_at_once(
    master: Master, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_context, "FIRST_POLL_DELAY_S", 3600.0)
    with core_api.init(master=master.address, max_length=1):
        wire.wait_sent("WatchPreemption")  # its polls are its heartbeat


def test_close_does_not_wait_for_the_long_poll(cluster_trial: Make, wire: Wire) -> None:
    cluster_trial()
    ctx = core_api.init()
    (watch,) = wire.wait_sent("WatchPreemption")
    assert watch.answered is None  # the master holds the long poll (30 s)
    t0 = time.monotonic()
    ctx.close()
    assert time.monotonic() - t0 < 3
    wait_for(lambda: watch.code is not None, 10, "the long poll to end")
    assert watch.code == grpc.StatusCode.CANCELLED  # cancelled by close(), not waited out


def test_unmanaged_mode(master: Master, stubs: Stubs, wire: Wire) -> None:
    with core_api.init(
        master=master.address, experiment_name="nb", hparams={"lr": 1}, max_length=1
    ) as ctx:
        assert ctx.mode == "unmanaged"
        assert ctx.info is not None
        tid, exp_id = ctx.info.trial.trial_id, ctx.info.trial.experiment_id
        assert [t.id for t in stubs.trials_of(exp_id)] == [tid]
        assert trial_state(stubs.trial(tid)) == "RUNNING"
        assert ctx.info.trial.hparams == {"lr": 1}
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        with ctx.checkpoint.store_path({"steps_completed": 1}) as (path, sid):
            (path / "f").write_text("x")
        assert path.parent == master.checkpoint_dir.resolve()
        assert [op.length for op in _run_ops(ctx)] == [1]
        assert ctx.preempt.should_preempt() is False
    (create,) = wire.requests("CreateUnmanagedTrial")
    assert json.loads(create.config) == {"name": "nb"} and json.loads(create.hparams_json) == {
        "lr": 1
    }
    exp = stubs.experiment(exp_id)
    assert exp.unmanaged and exp.name == "nb"
    assert stubs.exp_state(exp_id) == "COMPLETED"
    trial = stubs.trial(tid)
    assert json.loads(trial.hparams_json) == {"lr": 1} and trial_state(trial) == "COMPLETED"
    assert get_checkpoint(stubs, sid).trial_id == tid
    assert _stored_steps(stubs, tid) == [1]
    exits = [(r.trial_id, r.run_id, r.exit_code) for r in wire.requests("ReportTrialExit")]
    assert exits == [(tid, 1, 0)]


def test_unmanaged_mode_from_env_and_failure_exit(
    master: Master,
    stubs: Stubs,
    wire: Wire,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    monkeypatch.setenv("DET_MASTER", master.address)
    with pytest.raises(KeyError), core_api.init(checkpoint_storage=tmp_path / "mine") as ctx:
        with ctx.checkpoint.store_path({"steps_completed": 1}) as (path, sid):
            pass
        assert path.parent == (tmp_path / "mine").resolve()
        raise KeyError("boom")
    (create,) = wire.requests("CreateUnmanagedTrial")
    mine = str((tmp_path / "mine").resolve())
    assert json.loads(create.config)["checkpoint_storage"]["path"] == mine
    assert ctx.info is not None
    tid, exp_id = ctx.info.trial.trial_id, ctx.info.trial.experiment_id
    # recorded on the master, so the SDK finds the files where this run put them
    assert json.loads(get_checkpoint(stubs, sid).storage_json)["path"] == mine
    exits = [(r.trial_id, r.run_id, r.exit_code) for r in wire.requests("ReportTrialExit")]
    assert exits == [(tid, 1, 1)]
    assert trial_state(stubs.trial(tid)) == "ERROR"
    assert stubs.exp_state(exp_id) == "ERROR"


def test_unmanaged_length_comes_from_an_argument_never_a_guess(master: Master) -> None:
    with core_api.init(master=master.address, max_length={"epochs": 3}) as ctx:
        assert [(op.length, op.unit) for op in _run_ops(ctx)] == [(3, "epochs")]
    with (
        core_api.init(master=master.address) as ctx,
        pytest.raises(ValueError, match=r"pass core_api.init\(max_length=N\)"),
    ):
        next(iter(ctx.searcher.operations()))
    for bad in (-1, 1.5, True, {"steps": 3}, {"epochs": 3, "batches": 1}):
        with pytest.raises(ValueError, match="max_length must be"):
            core_api.init(master=master.address, max_length=bad)  # type: ignore[arg-type]


def _run_ops(ctx: core_api.Context) -> list[core_api.SearcherOperation]:
    out = []
    for op in ctx.searcher.operations():
        out.append(op)
        op.report_completed(0.0)
    return out


def _stored_steps(stubs: Stubs, trial_id: int) -> list[int]:
    return [
        p.steps_completed
        for page in stubs.trials.StreamMetrics(trial_pb2.StreamMetricsRequest(trial_ids=[trial_id]))
        for p in page.points
    ]


def test_unclosed_context_is_flushed_at_exit(master: Master, stubs: Stubs) -> None:
    script = (
        "import core_api\n"
        f"ctx = core_api.init(master={master.address!r})\n"
        "for i in range(500):\n"
        "    ctx.train.report_training_metrics(i, {'x': 1.0})\n"
    )
    subprocess.run(
        [sys.executable, "-c", script], check=True, timeout=60, env={"PYTHONPATH": str(REPO)}
    )
    (exp,) = stubs.experiments.ListExperiments(experiment_pb2.ListExperimentsRequest()).experiments
    (trial,) = stubs.trials_of(exp.id)
    assert exp.unmanaged
    assert _stored_steps(stubs, trial.id) == list(range(500))
    # the exit (code 0, run 1) was reported at interpreter exit
    assert trial_state(trial) == "COMPLETED" and trial.run_id == 1
    assert stubs.exp_state(exp.id) == "COMPLETED"
