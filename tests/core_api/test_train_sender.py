"""The metrics sender against a fake master that can lose replies and fail calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import core_api
from core_api import _channel
from determined_sdk import errors
from tests.core_api.fake_master import FakeMaster, Fault


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_channel, "DEFAULT_RETRY_SECONDS", 5.0)


def test_close_returns_with_everything_stored_in_order(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    n = 5000
    with core_api.init() as ctx:
        assert ctx.mode == "cluster"
        for i in range(n):
            ctx.train.report_training_metrics(i, {"loss": float(i)})
        ctx.train.report_validation_metrics(n, {"loss": 0.5})
    reports = fake.reports()
    assert len(reports) == n + 1
    assert [r[1] for r in reports if r[0] == "training"] == list(range(n))
    assert reports[-1][:3] == ("validation", n, {"loss": 0.5})
    sizes = [len(r.reports) for name, r in fake.state.calls if name == "ReportMetrics"]
    assert max(sizes) <= 1000
    assert all(
        r.trial_id == fake.state.trial_id for n_, r in fake.state.calls if n_ == "ReportMetrics"
    )


def test_lost_reply_is_resent_with_the_same_batch_id_and_stored_once(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    fake.state.faults.append(Fault("ReportMetrics", grpc.StatusCode.UNAVAILABLE, after=True))
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        ctx.train.report_training_metrics(2, {"loss": 2.0})
    calls = [r for name, r in fake.state.calls if name == "ReportMetrics"]
    assert len(calls) == 2 and calls[0].batch_id == calls[1].batch_id
    assert [r[1] for r in fake.reports()] == [1, 2]


def test_unavailable_before_the_call_is_retried(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    fake.state.faults.append(Fault("ReportMetrics", grpc.StatusCode.UNAVAILABLE, count=3))
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
    assert [r[1] for r in fake.reports()] == [1]


def test_a_failed_send_surfaces_on_the_next_call(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    fake.state.faults.append(Fault("ReportMetrics", grpc.StatusCode.INVALID_ARGUMENT))
    ctx = core_api.init()
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    fake.wait(lambda st: any(n == "ReportMetrics" for n, _ in st.calls))
    with pytest.raises(errors.InvalidArgumentError, match="injected") as info:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the error lands a moment after the call
            ctx.train.report_training_metrics(2, {"loss": 2.0})
    assert not isinstance(info.value, grpc.RpcError)
    ctx.train.report_training_metrics(3, {"loss": 3.0})  # raised once; reporting goes on
    ctx.close()
    assert 3 in [r[1] for r in fake.reports()]


def test_a_failed_send_surfaces_at_close(fake: FakeMaster, on_cluster: Callable[..., Any]) -> None:
    on_cluster()
    fake.state.faults.append(Fault("ReportMetrics", grpc.StatusCode.PERMISSION_DENIED))
    ctx = core_api.init()
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    with pytest.raises(errors.PermissionDeniedError):
        ctx.close()
    with pytest.raises(core_api.ContextClosedError):
        ctx.train.report_training_metrics(2, {"loss": 1.0})


def test_master_down_surfaces_as_unavailable(
    fake: FakeMaster, on_cluster: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_channel, "DEFAULT_RETRY_SECONDS", 0.5)
    on_cluster()
    ctx = core_api.init()
    fake.stop()
    ctx.train.report_training_metrics(1, {"loss": 1.0})
    with pytest.raises(errors.MasterUnavailableError):
        ctx.close()


def test_bad_metric_raises_and_earlier_metrics_are_kept(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    with core_api.init() as ctx:
        ctx.train.report_training_metrics(1, {"loss": 1.0})
        with pytest.raises(TypeError, match="metric 'acc' must be a number, got str"):
            ctx.train.report_training_metrics(2, {"loss": 1.0, "acc": "x"})
    assert [r[1] for r in fake.reports()] == [1]


def test_bounded_queue_blocks_instead_of_dropping(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    ctx = core_api.init()
    ctx.train.close()  # swap in a tiny-queue train context on the same session
    ctx.train = core_api.TrainContext(
        ctx._session, trial_id=fake.state.trial_id, max_queue=50, batch_size=10
    )
    for i in range(2000):
        ctx.train.report_training_metrics(i, {"x": 1.0})
    ctx.close()
    assert len(fake.reports()) == 2000


def test_progress_is_coalesced_and_sent_after_metrics(
    fake: FakeMaster, on_cluster: Callable[..., Any]
) -> None:
    on_cluster()
    with core_api.init() as ctx:
        for i in range(100):
            ctx.train.report_training_metrics(i, {"x": 1.0})
            ctx.train.report_progress(i / 100)
        ctx.train.flush()
        assert fake.state.progress[-1] == pytest.approx(0.99)
        assert len(fake.state.progress) < 100
    names = [n for n, _ in fake.state.calls if n in ("ReportMetrics", "ReportProgress")]
    assert names[0] == "ReportMetrics"


def test_early_exit_and_best_validation(fake: FakeMaster, on_cluster: Callable[..., Any]) -> None:
    on_cluster()
    fake.state.best = 0.25
    with core_api.init() as ctx:
        assert ctx.train.get_experiment_best_validation() == 0.25
        ctx.train.report_training_metrics(1, {"x": 1.0})
        ctx.train.report_early_exit(core_api.EarlyExitReason.INVALID_HP)
    assert fake.state.early_exit == ["INVALID_HP"]
    names = [n for n, _ in fake.state.calls]
    assert names.index("ReportMetrics") < names.index("ReportEarlyExit")


def test_report_cost_is_microseconds(fake: FakeMaster, on_cluster: Callable[..., Any]) -> None:
    on_cluster()
    with core_api.init() as ctx:
        report = ctx.train.report_training_metrics
        samples = []
        for i in range(20_000):
            t0 = time.perf_counter_ns()
            report(i, {"loss": 0.5})
            samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    p50_us = samples[len(samples) // 2] / 1000
    # The goal is 5 us on an idle core; leave room for a shared CI machine.
    assert p50_us < 25, f"p50 {p50_us:.2f} us"
