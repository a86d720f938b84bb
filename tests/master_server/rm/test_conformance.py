"""The resource-manager contract (``master_server/rm/base.py``), one suite for every backend.

Each test runs against the local backend (supervisors on this machine) and the Ray backend (a
real two-node Ray cluster on loopback), with real supervisor and rank processes. Entry points
print nothing: the runs here belong to no trial of the master, so the master would refuse
their log lines.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
from collections import defaultdict

import pytest

from master_server.rm.base import LaunchSpec, ResourceManager
from tests.master_server.rm.conftest import Backend
from tests.support import wait_for

pytestmark = pytest.mark.slow

# Each rank writes its pid to DIR/<RANK> and then sleeps until it is stopped.
SLEEPER = (
    "import os, pathlib, sys, time; "
    "pathlib.Path(sys.argv[1], os.environ.get('RANK', '0')).write_text(str(os.getpid())); "
    "time.sleep(600)"
)


class Exits:
    """Collects ``on_exit`` calls."""

    def __init__(self) -> None:
        self.calls: dict[tuple[int, int], list[int]] = defaultdict(list)
        self._lock = threading.Lock()

    def __call__(self, trial_id: int, run_id: int, code: int) -> None:
        with self._lock:
            self.calls[(trial_id, run_id)].append(code)

    def code(self, trial_id: int, run_id: int) -> int:
        got = wait_for(
            lambda: list(self.calls.get((trial_id, run_id), [])),
            120,
            f"the exit of trial {trial_id} run {run_id}",
        )
        return got[0]


def _spec(trial_id: int, run_id: int, slots: int, argv: list[str]) -> LaunchSpec:
    return LaunchSpec(
        trial_id=trial_id,
        experiment_id=1,
        run_id=run_id,
        entrypoint=argv,
        slots=slots,
        env={},
        cluster_info={"trial_id": trial_id, "experiment_id": 1, "run_id": run_id},
        model_definition=lambda: b"",
    )


def _sleepers(tmp: pathlib.Path, name: str) -> tuple[list[str], pathlib.Path]:
    d = tmp / name
    d.mkdir()
    return [sys.executable, "-c", SLEEPER, str(d)], d


def _pids(d: pathlib.Path, n: int) -> list[int]:
    def written() -> list[str] | None:
        # A rank's file exists a moment before its pid is in it: wait for the text too.
        texts = [f.read_text() for f in sorted(d.iterdir())]
        return texts if len(texts) >= n and all(texts) else None

    return [int(t) for t in wait_for(written, 120, "ranks")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_gang_allocation_is_all_or_nothing_and_fifo(backend: Backend) -> None:
    rm = backend.make()
    assert rm.total_slots == backend.slots
    assert rm.free_slots == backend.slots
    rm.request(1, 3)
    rm.request(2, 2)  # does not fit next to 1
    rm.request(3, 1)  # would fit, but must not pass 2 (FIFO)
    rm.request(4, backend.slots + 1)  # can never fit today: waits, blocks nobody
    rm.request(1, 3)  # no-op: already queued
    assert [(a.trial_id, a.slots) for a in rm.allocate()] == [(1, 3)]
    assert rm.free_slots == backend.slots - 3
    assert rm.allocate() == []
    rm.release(1)
    assert [a.trial_id for a in rm.allocate()] == [2, 3]
    assert rm.free_slots == backend.slots - 3
    assert rm.withdraw(4) is True
    assert rm.withdraw(4) is False
    assert rm.withdraw(2) is False  # allocated, not queued
    rm.release(2)
    rm.release(3)
    assert rm.free_slots == backend.slots


def test_exit_is_reported_with_its_code(backend: Backend) -> None:
    rm = backend.make()
    exits = Exits()
    rm.start(exits)
    rm.request(7, 2)
    assert [a.trial_id for a in rm.allocate()] == [7]
    rm.start_run(_spec(7, 1, 2, [sys.executable, "-c", "import sys; sys.exit(3)"]))
    assert exits.code(7, 1) == 3
    rm.request(8, 1)
    rm.allocate()
    rm.start_run(_spec(8, 1, 1, [sys.executable, "-c", "pass"]))
    assert exits.code(8, 1) == 0


def test_kill_kills_the_whole_gang(backend: Backend, tmp_path: pathlib.Path) -> None:
    rm = backend.make()
    exits = Exits()
    rm.start(exits)
    argv, d = _sleepers(tmp_path, "gang")
    rm.request(1, 2)
    rm.allocate()
    rm.start_run(_spec(1, 1, 2, argv))
    pids = _pids(d, 2)
    assert rm.kill(1, 1) is True
    assert exits.code(1, 1) != 0
    wait_for(lambda: not any(_alive(p) for p in pids), 60, "every rank to be gone")


def test_terminate_reaches_the_ranks(backend: Backend, tmp_path: pathlib.Path) -> None:
    rm = backend.make()
    exits = Exits()
    rm.start(exits)
    argv, d = _sleepers(tmp_path, "term")
    rm.request(1, 1)
    rm.allocate()
    rm.start_run(_spec(1, 1, 1, argv))
    (pid,) = _pids(d, 1)
    assert rm.terminate(1, 1) is True
    assert exits.code(1, 1) in (128 + signal.SIGTERM, 1, -signal.SIGTERM)
    wait_for(lambda: not _alive(pid), 60, "the rank to be gone")


def test_orders_for_stale_run_ids_are_ignored(backend: Backend, tmp_path: pathlib.Path) -> None:
    rm = backend.make()
    exits = Exits()
    rm.start(exits)
    assert rm.kill(5, 1) is False  # no such run
    assert rm.terminate(5, 1) is False
    rm.request(5, 1)
    rm.allocate()
    rm.start_run(_spec(5, 1, 1, [sys.executable, "-c", "pass"]))
    assert exits.code(5, 1) == 0
    rm.release(5)
    argv, d = _sleepers(tmp_path, "stale")
    rm.request(5, 1)
    rm.allocate()
    rm.start_run(_spec(5, 2, 1, argv))
    (pid,) = _pids(d, 1)
    assert rm.kill(5, 1) is False  # the old run: a late timer must not touch run 2
    assert rm.terminate(5, 1) is False
    assert rm.terminate(5, 3) is False
    assert _alive(pid)
    assert rm.kill(5, 2) is True
    assert exits.code(5, 2) != 0
    assert rm.kill(5, 2) is False  # ended


def test_a_new_resource_manager_adopts_live_runs(backend: Backend, tmp_path: pathlib.Path) -> None:
    first = backend.make()
    first.start(Exits())
    argv, d = _sleepers(tmp_path, "adopt")
    first.request(3, 2)
    first.allocate()
    first.start_run(_spec(3, 1, 2, argv))
    pids = _pids(d, 2)
    first.stop(keep_runs=True)
    assert all(_alive(p) for p in pids)

    second: ResourceManager = backend.make()
    exits = Exits()
    second.start(exits)
    live = second.live_runs()
    assert [(r.trial_id, r.run_id) for r in live] == [(3, 1)]
    assert second.adopt(live[0], 2) is True
    assert second.free_slots == backend.slots - 2  # its slots are held
    assert second.kill(3, 2) is False  # not the adopted run id
    assert second.kill(3, 1) is True
    assert exits.code(3, 1) != 0
    wait_for(lambda: not any(_alive(p) for p in pids), 60, "every rank to be gone")


def test_a_run_that_cannot_be_verified_is_not_adopted_and_can_be_discarded(
    backend: Backend, tmp_path: pathlib.Path
) -> None:
    first = backend.make()
    first.start(Exits())
    argv, d = _sleepers(tmp_path, "discard")
    first.request(4, 1)
    first.allocate()
    first.start_run(_spec(4, 1, 1, argv))
    (pid,) = _pids(d, 1)
    first.stop(keep_runs=True)

    second = backend.make()
    second.start(Exits())
    (run,) = second.live_runs()
    if backend.name == "ray":
        assert second.adopt(run, 2) is False  # it has one rank, not two
    else:
        assert second.adopt(type(run)(run.trial_id, run.run_id, pid=os.getpid()), 1) is False
    assert second.free_slots == backend.slots
    second.discard(run)
    wait_for(lambda: not _alive(pid), 60, "the discarded run to be gone")
    wait_for(lambda: second.live_runs() == [], 60, "no live runs left")
