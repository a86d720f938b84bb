"""The FIFO gang scheduler."""

from __future__ import annotations

import pytest

from master_server.scheduler import Allocation, Scheduler


def test_fifo_and_gang() -> None:
    s = Scheduler(4)
    s.enqueue(1, 2)
    s.enqueue(2, 4)  # a gang of 4 waits until all 4 are free
    s.enqueue(3, 1)
    assert s.schedule() == [Allocation(1, 2)]
    assert s.free_slots == 2
    # Strict FIFO: trial 3 would fit, but the gang at the head goes first (no starvation).
    assert s.schedule() == []
    s.release(1)
    assert s.schedule() == [Allocation(2, 4)]
    s.release(2)
    assert s.schedule() == [Allocation(3, 1)]


def test_enqueue_is_idempotent_and_dequeue() -> None:
    s = Scheduler(1)
    s.enqueue(1, 1)
    s.enqueue(1, 1)
    assert s.queued() == [1]
    assert s.dequeue(1) and not s.dequeue(1)
    assert s.schedule() == []


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="slots"):
        Scheduler(0)
    with pytest.raises(ValueError, match="trial 5 needs 0 slots"):
        Scheduler(2).enqueue(5, 0)


def test_a_trial_larger_than_the_cluster_waits_without_blocking_others() -> None:
    s = Scheduler(2)
    s.enqueue(5, 3)
    s.enqueue(6, 1)
    assert [a.trial_id for a in s.schedule()] == [6]
    assert s.queued() == [5]
