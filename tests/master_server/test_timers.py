"""The engine's one-thread deadline scheduler (grace periods of stop requests)."""

from __future__ import annotations

import threading
import time

from master_server.engine.timers import Deadlines


def test_calls_come_in_deadline_order_from_one_thread() -> None:
    d = Deadlines("test-deadlines")
    calls: list[tuple[str, str]] = []
    done = threading.Event()

    def note(what: str) -> None:
        calls.append((what, threading.current_thread().name))
        if len(calls) == 3:
            done.set()

    d.call_later(0.3, note, "late")
    d.call_later(0.0, note, "now")
    d.call_later(0.1, note, "soon")
    assert done.wait(10.0)
    assert [c[0] for c in calls] == ["now", "soon", "late"]
    assert {c[1] for c in calls} == {"test-deadlines"}
    assert d.pending() == 0
    d.close()


def test_a_failing_call_is_logged_and_the_others_still_run() -> None:
    d = Deadlines()
    ran = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    d.call_later(0.0, boom)
    d.call_later(0.05, ran.set)
    assert ran.wait(10.0)
    d.close()


def test_close_drops_waiting_calls_and_ignores_new_ones() -> None:
    d = Deadlines()
    ran = threading.Event()
    d.call_later(60.0, ran.set)
    assert d.pending() == 1
    t0 = time.monotonic()
    d.close()
    assert time.monotonic() - t0 < 5.0  # the thread did not wait out the deadline
    assert d.pending() == 0
    d.call_later(0.0, ran.set)
    assert d.pending() == 0
    assert not ran.is_set()


def test_many_deadlines_use_one_thread() -> None:
    d = Deadlines("one-thread")
    before = threading.active_count()
    for _ in range(500):
        d.call_later(60.0, lambda: None)
    assert threading.active_count() <= before + 1
    assert d.pending() == 500
    d.close()
