"""The metrics sender against a real master, with faults injected on the wire: lost replies,
UNAVAILABLE before the call, failing calls, and the master going away.

Faults come from ``wire`` (a client interceptor on core_api's channel, ``tests/core_api/wire.py``);
every call that gets through reaches the real master, and the assertions read back what the
master stored.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import grpc
import pytest

import core_api
from core_api import _channel
from determined_sdk import errors
from master_server.app import Master
from tests.core_api.live_trial import LiveTrial
from tests.core_api.wire import Wire

Make = Callable[..., LiveTrial]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_channel, "DEFAULT_RETRY_SECONDS", 5.0)


def steps(t: LiveTrial, group: str = "") -> list[int]:
    return [s for _, s, _, _ in t.metrics(group)]


def test_close_returns_with_everything_stored_in_order(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial()
    n = 5000
    with core_api.init() as ctx:
        assert ctx.mode == "cluster"
        batch_size = ctx.train._batch_size
        for i in range(n):
            ctx.train.report_training_metrics(i, {"loss": float(i)})
        ctx.train.report_validation_metrics(n, {"loss": 0.5})
    # close() returned: everything is stored, nothing twice
    reports = t.metrics()
    assert len(reports) == n + 1
    assert [r[1] for r in reports if r[0] == "training"] == list(range(n))
    assert [r[2]["loss"] for r in reports if r[0] == "training"] == [float(i) for i in range(n)]
    assert reports[-1][:3] == ("validation", n, {"loss": 0.5})
    summary = t.summary()
    assert summary["avg_metrics"]["loss"]["count"] == n
    assert summary["validation_metrics"]["loss"]["count"] == 1
    sends = wire.calls("ReportMetrics")
    assert len(sends) >= math.ceil((n + 1) / batch_size)
    assert all(c.request.trial_id == t.trial_id for c in sends)
    assert all(c.code == grpc.StatusCode.OK and not c.response.duplicate for c in sends)
    # at most one batch is in flight: each is answered before the next is sent
    assert all(a.answered_before(b) for a, b in itertools.pairwise(sends))


def test_lost_reply_is_resent_with_the_same_batch_id_and_stored_once(
    cluster_trial: Make, wire: Wire
) -> None:
    t = cluster_trial()
    wire.inject("ReportMetrics", grpc.StatusCode.UNAVAILABLE, after=True)
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        ctx.train.report_training_metrics(2, {"loss": 2.0})
    calls = wire.calls("ReportMetrics")
    assert len(calls) == 2 and calls[0].request.batch_id == calls[1].request.batch_id
    assert calls[0].injected and calls[0].code == grpc.StatusCode.UNAVAILABLE
    # the master had stored the first attempt: it acknowledges the resend as a duplicate
    assert calls[1].code == grpc.StatusCode.OK and calls[1].response.duplicate
    assert steps(t) == [1, 2]
    assert t.summary()["avg_metrics"]["loss"]["count"] == 2


def test_unavailable_before_the_call_is_retried(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial()
    wire.inject("ReportMetrics", grpc.StatusCode.UNAVAILABLE, count=3)
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
    calls = wire.calls("ReportMetrics")
    assert [c.injected for c in calls] == [True, True, True, False]
    assert len({c.request.batch_id for c in calls}) == 1
    assert not calls[-1].response.duplicate  # the master saw only the last attempt
    assert steps(t) == [1]


def test_a_failed_send_surfaces_on_the_next_call(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial()
    wire.inject("ReportMetrics", grpc.StatusCode.INVALID_ARGUMENT)
    ctx = core_api.init()
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    wire.wait_sent("ReportMetrics")
    with pytest.raises(errors.InvalidArgumentError, match="injected") as info:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the error lands a moment after the call
            ctx.train.report_training_metrics(2, {"loss": 2.0})
    assert not isinstance(info.value, grpc.RpcError)
    ctx.train.report_training_metrics(3, {"loss": 3.0})  # raised once; reporting goes on
    ctx.close()
    stored = steps(t)
    assert 3 in stored and 1 not in stored  # the failed batch is dropped, not retried


def test_a_failed_send_surfaces_at_close(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial()
    wire.inject("ReportMetrics", grpc.StatusCode.PERMISSION_DENIED)
    ctx = core_api.init()
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    with pytest.raises(errors.PermissionDeniedError):
        ctx.close()
    with pytest.raises(core_api.ContextClosedError):
        ctx.train.report_training_metrics(2, {"loss": 1.0})
    assert steps(t) == []


def test_master_down_surfaces_as_unavailable(
    cluster_trial: Make, master: Master, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_channel, "DEFAULT_RETRY_SECONDS", 0.5)
    cluster_trial()
    ctx = core_api.init()
    master.stop()
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    with pytest.raises(errors.MasterUnavailableError):
        ctx.close()


def test_bad_metric_raises_and_earlier_metrics_are_kept(cluster_trial: Make) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        with pytest.raises(TypeError, match="metric 'acc' must be a number, got str"):
            ctx.train.report_training_metrics(2, {"loss": 1.0, "acc": "x"})
    assert steps(t) == [1]


def test_bounded_queue_blocks_instead_of_dropping(cluster_trial: Make) -> None:
    t = cluster_trial()
    ctx = core_api.init()
    ctx.train.close()  # swap in a tiny-queue train context on the same session
    ctx.train = core_api.TrainContext(
        ctx._session, trial_id=t.trial_id, max_queue=50, batch_size=10
    )
    for i in range(2000):
        ctx.train.report_training_metrics(i, {"x": 1.0})
    ctx.close()
    assert steps(t) == list(range(2000))


def test_progress_is_coalesced_and_sent_after_metrics(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial()
    with core_api.init() as ctx:
        for i in range(100):
            ctx.train.report_training_metrics(i, {"x": 1.0})
            ctx.train.report_progress(i / 100)
        ctx.train.flush()
        progress = [r.progress for r in wire.requests("ReportProgress")]
        assert progress[-1] == pytest.approx(0.99)
        assert len(progress) < 100
        assert t.trial().progress == pytest.approx(0.99)
    names = [n for n in wire.names() if n in ("ReportMetrics", "ReportProgress")]
    assert names[0] == "ReportMetrics"


def test_early_exit_and_best_validation(cluster_trial: Make, wire: Wire) -> None:
    t = cluster_trial()  # its searcher metric is "loss", smaller is better
    with core_api.init() as ctx:
        assert ctx.train.get_experiment_best_validation() is None
        ctx.train.report_validation_metrics(1, {"loss": 0.5})
        ctx.train.report_validation_metrics(2, {"loss": 0.25})
        ctx.train.flush()
        assert ctx.train.get_experiment_best_validation() == 0.25
        ctx.train.report_training_metrics(3, {"x": 1.0})
        ctx.train.report_early_exit(core_api.EarlyExitReason.INVALID_HP)
    assert [r.reason for r in wire.requests("ReportEarlyExit")] == ["INVALID_HP"]
    assert wire.calls("ReportMetrics")[-1].answered_before(wire.first("ReportEarlyExit"))
    assert steps(t, "training") == [3]
    t.release()
    assert t.wait_settled() == "COMPLETED"
    # Recorded, in words, when its process exited.
    assert t.trial().exit_reason == "the trial reported invalid hyperparameters (INVALID_HP)"
