"""Local resource manager: N slots, gang scheduling, first-in first-out.

A trial asking for ``k`` slots starts only when ``k`` slots are free, all ranks together. The
queue is strictly FIFO: when the trial at its head does not fit, nothing behind it starts, so a
large gang is never starved by a stream of small ones (seed 004: experiments submitted at night
run one after another). Not thread-safe on its own: the experiment service calls it under its
lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Allocation:
    """A trial that was given slots."""

    trial_id: int
    slots: int


class Scheduler:
    """FIFO gang scheduler over ``total_slots`` identical slots."""

    def __init__(self, total_slots: int, *, allow_empty: bool = False) -> None:
        if total_slots < (0 if allow_empty else 1):
            raise ValueError(f"slots: must be >= 1, got {total_slots}")
        self.total_slots = total_slots
        self._queue: OrderedDict[int, int] = OrderedDict()  # trial_id -> slots, in arrival order
        self._running: dict[int, int] = {}

    @property
    def free_slots(self) -> int:
        return self.total_slots - sum(self._running.values())

    def resize(self, total_slots: int) -> None:
        """Change the capacity (a cluster's nodes came or went). Running trials keep their
        slots; when there are fewer slots than running trials hold, nothing new starts."""
        self.total_slots = max(0, total_slots)

    def enqueue(self, trial_id: int, slots: int) -> None:
        """Queue a trial (no-op when it is already queued or running).

        A trial needing more slots than there are waits in the queue (the cluster may grow)
        without holding up the trials behind it.
        """
        if slots < 1:
            raise ValueError(f"trial {trial_id} needs {slots} slots; must be >= 1")
        if trial_id not in self._queue and trial_id not in self._running:
            self._queue[trial_id] = slots

    def dequeue(self, trial_id: int) -> bool:
        """Take a trial out of the queue; True if it was there."""
        return self._queue.pop(trial_id, None) is not None

    def release(self, trial_id: int) -> None:
        """Give back the slots of a trial that stopped running."""
        self._running.pop(trial_id, None)

    def hold(self, trial_id: int, slots: int) -> None:
        """Count ``slots`` as used by a trial that is already running (adopted after a restart)."""
        self._queue.pop(trial_id, None)
        self._running[trial_id] = slots

    def is_queued(self, trial_id: int) -> bool:
        return trial_id in self._queue

    def is_running(self, trial_id: int) -> bool:
        return trial_id in self._running

    def queued(self) -> list[int]:
        return list(self._queue)

    def schedule(self) -> list[Allocation]:
        """Start as many trials from the head of the queue as fit; returns them in order."""
        out: list[Allocation] = []
        free = self.free_slots
        for trial_id, slots in list(self._queue.items()):
            if slots > self.total_slots:
                continue  # can never fit today: waits for more slots, blocks nobody
            if slots > free:
                break
            del self._queue[trial_id]
            self._running[trial_id] = slots
            free -= slots
            out.append(Allocation(trial_id, slots))
        return out
