"""Run starts off the engine's lock (``master_server/engine/launches.py``), with a real local
resource manager starting real supervisors: stop orders for runs not started yet are not lost.

A gate around the resource manager's ``start_run`` holds the launch thread at a chosen point,
so that an order can be given while a run is queued or while it is being started.
"""

from __future__ import annotations

import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from master_server.app import Master
from master_server.engine.launches import Launches
from master_server.rm.base import LaunchSpec
from master_server.rm.local import LocalResourceManager
from tests.master_server.rm.test_conformance import Exits, _alive, _pids, _sleepers, _spec
from tests.support import wait_for


class GatedRM(LocalResourceManager):
    """The local resource manager, whose ``start_run`` can be held (before or after the real
    start) and made to fail for chosen trials."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hold_before: set[int] = set()
        self.hold_after: set[int] = set()
        self.fail: set[int] = set()
        self.gate = threading.Event()
        self.at_gate = threading.Event()
        self.started: list[tuple[int, int]] = []

    def start_run(self, spec: LaunchSpec) -> None:
        if spec.trial_id in self.fail:
            raise OSError("no room left on the device")
        if spec.trial_id in self.hold_before:
            self.at_gate.set()
            assert self.gate.wait(60)
        super().start_run(spec)
        self.started.append((spec.trial_id, spec.run_id))
        if spec.trial_id in self.hold_after:
            self.at_gate.set()
            assert self.gate.wait(60)


@pytest.fixture
def rm(master_factory: Callable[..., Master], tmp_path: pathlib.Path) -> Iterator[GatedRM]:
    master = master_factory()
    data_dir = tmp_path / "rm"
    data_dir.mkdir()
    made = GatedRM(
        data_dir, 4, lambda: master.address, trial_token=master.parts["auth"].trial_token
    )
    yield made
    made.stop()


def _launches(rm: GatedRM) -> tuple[Launches, Exits, Exits, list[tuple[int, int, str]]]:
    rm_exits, stopped = Exits(), Exits()
    rm.start(rm_exits)
    failures: list[tuple[int, int, str]] = []
    launches = Launches(
        rm, on_exit=stopped, on_failed=lambda t, r, why: failures.append((t, r, why))
    )
    return launches, rm_exits, stopped, failures


def test_a_run_killed_while_queued_is_never_started(rm: GatedRM, tmp_path: pathlib.Path) -> None:
    launches, rm_exits, stopped, _ = _launches(rm)
    first, first_dir = _sleepers(tmp_path, "first")
    second, _ = _sleepers(tmp_path, "second")
    rm.hold_before = {1}
    launches.submit(_spec(1, 1, 1, first))
    assert rm.at_gate.wait(30)  # the launch thread is busy with trial 1
    launches.submit(_spec(2, 1, 1, second))
    assert launches.pending() == 2
    assert launches.kill(2, 1)  # queued: it will never start
    assert launches.terminate(2, 1)  # still known, and a kill is not weakened to a TERM
    rm.gate.set()
    assert stopped.code(2, 1) == -signal.SIGKILL
    wait_for(lambda: launches.pending() == 0, 30, "the queue to empty")
    assert rm.started == [(1, 1)]
    (pid,) = _pids(first_dir, 1)
    assert _alive(pid)
    assert not launches.kill(2, 1)  # gone now: the resource manager answers
    assert launches.kill(1, 1)
    assert rm_exits.code(1, 1) != 0
    launches.close()


def test_a_stop_during_the_start_is_carried_out_after_it(
    rm: GatedRM, tmp_path: pathlib.Path
) -> None:
    launches, rm_exits, stopped, _ = _launches(rm)
    argv, d = _sleepers(tmp_path, "run")
    rm.hold_after = {3}
    launches.submit(_spec(3, 1, 1, argv))
    assert rm.at_gate.wait(30)  # started, and start_run has not returned yet
    # The rank is known before the stop (a TERM that beats its first line would leave no pid).
    (pid,) = _pids(d, 1)
    assert launches.terminate(3, 1)
    rm.gate.set()
    assert rm_exits.code(3, 1) != 0  # the TERM reached the run once its start returned
    wait_for(lambda: not _alive(pid), 30, "the rank to end")
    assert not stopped.calls  # it did start: its exit comes from the resource manager
    launches.close()


def test_a_failed_start_is_reported_and_the_queue_goes_on(
    rm: GatedRM, tmp_path: pathlib.Path
) -> None:
    launches, rm_exits, _, failures = _launches(rm)
    argv = [sys.executable, "-c", "pass"]
    rm.fail = {4}
    launches.submit(_spec(4, 2, 1, argv))
    launches.submit(_spec(5, 1, 1, argv))
    assert rm_exits.code(5, 1) == 0
    assert failures == [(4, 2, "launch failed: no room left on the device")]
    launches.close()


def test_close_drops_queued_starts(rm: GatedRM, tmp_path: pathlib.Path) -> None:
    launches, _, stopped, _ = _launches(rm)
    argv, _ = _sleepers(tmp_path, "held")
    rm.hold_before = {6}
    launches.submit(_spec(6, 1, 1, argv))
    assert rm.at_gate.wait(30)
    launches.submit(_spec(7, 1, 1, [sys.executable, "-c", "pass"]))
    closer = threading.Thread(target=launches.close)
    closer.start()
    wait_for(lambda: launches.pending() == 1, 30, "the queued start to be dropped")
    rm.gate.set()  # the start under way finishes; nothing after it starts
    closer.join(60)
    assert not closer.is_alive()
    assert rm.started == [(6, 1)]
    assert not stopped.calls
    launches.submit(_spec(8, 1, 1, argv))  # closed: ignored
    assert launches.pending() == 0
    assert rm.kill(6, 1)
