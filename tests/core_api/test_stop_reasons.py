"""The master says why it asks a trial to stop, and the trial's log says it in words."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable

import pytest

import core_api
from tests.core_api.live_trial import LiveTrial
from tests.core_api.wire import Wire
from tests.support import Stubs, wait_for


def _stop_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "core_api._preempt" and "stop" in r.getMessage()
    ]


def test_a_pause_is_named(
    cluster_trial: Callable[..., LiveTrial],
    stubs: Stubs,
    wire: Wire,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = cluster_trial()
    with caplog.at_level(logging.DEBUG, logger="core_api"), core_api.init() as ctx:
        wire.wait_sent("WatchPreemption")
        stubs.action(t.experiment_id, "pause")
        wait_for(ctx.preempt.should_preempt, 30, "the preemption signal")
    assert _stop_lines(caplog) == [
        (logging.INFO, "the experiment is being paused; this trial should checkpoint and stop")
    ]
    t.release()
    assert t.wait_settled() == "PAUSED"
    assert (
        t.trial().exit_reason == "the experiment was paused; it resumes from the latest checkpoint"
    )


def test_the_searchers_stop_is_routine(
    cluster_trial: Callable[..., LiveTrial],
    wire: Wire,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = cluster_trial(custom=True, ops=[2])
    with caplog.at_level(logging.DEBUG, logger="core_api"), core_api.init() as ctx:
        wire.wait_sent("WatchPreemption")
        t.post({"type": "stop", "request_id": "r1"})
        wait_for(ctx.preempt.should_preempt, 30, "the preemption signal")
    # Not "preemption" at INFO on an ordinary end: the searcher's stop is logged at DEBUG.
    assert _stop_lines(caplog) == [
        (logging.DEBUG, "the searcher needs no more training from this trial; it should stop")
    ]
    assert all("preemption" not in m for _, m in _stop_lines(caplog))
    t.release()
    assert t.wait_settled() == "COMPLETED"
    assert t.trial().exit_reason == "stopped early by the searcher"


def test_off_cluster_tensorboard_path(tmp_path: pathlib.Path) -> None:
    with core_api.init(checkpoint_storage=tmp_path) as ctx:
        assert ctx.train.get_tensorboard_path() == tmp_path.resolve() / "tensorboard"
        assert (tmp_path / "tensorboard").is_dir()
