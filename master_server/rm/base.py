"""The resource-manager interface the engine talks to (local processes today, Ray later).

Contract:

* **Gang allocation.** :meth:`ResourceManager.request` queues a trial for ``slots`` slots;
  :meth:`ResourceManager.allocate` grants queued trials all their slots at once (never part of
  them), first in first out, and returns the grants. :meth:`ResourceManager.release` gives the
  slots of a trial back; :meth:`ResourceManager.withdraw` takes a trial out of the queue.
* **Runs are addressed by (trial_id, run_id).** Every signal, kill and exit names the run; an
  order for a run that is no longer the trial's current one is ignored (returns False), so a late
  timer never touches a newer run.
* **Exits.** The ``on_exit(trial_id, run_id, exit_code)`` callback given to
  :meth:`ResourceManager.start` is called at least once for every run that ends; the engine
  ignores repeats.
* **Threads.** Allocation methods are not thread-safe on their own (the engine calls them under
  its lock). :meth:`ResourceManager.start_run` is called off that lock, by the engine's one
  launch thread (one start at a time, while other threads allocate and release); signal,
  kill and live-run methods may be called from any thread.
"""

from __future__ import annotations

import abc
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ExitCallback = Callable[[int, int, int], None]  # (trial_id, run_id, exit_code)


@dataclass(frozen=True)
class Allocation:
    """A trial that was given its slots."""

    trial_id: int
    slots: int


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one run of a trial."""

    trial_id: int
    experiment_id: int
    run_id: int
    entrypoint: str | list[str]  # a string is one command line (split like a shell)
    slots: int
    env: dict[str, str]
    cluster_info: dict[str, Any]
    model_definition: Callable[[], bytes]


@dataclass(frozen=True)
class LiveRun:
    """A run the resource manager found alive (for adoption after a master restart)."""

    trial_id: int
    run_id: int
    pid: int
    secret: str = ""
    # Set when the run had already ended while no master watched it (its supervisor left its
    # exit code in the run directory): adopting it hands that exit on, and nothing is killed.
    exit_code: int | None = None


class ResourceManager(abc.ABC):
    """Slots, gang allocation and the runs placed in them; see the module docstring."""

    # -- lifecycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def start(self, on_exit: ExitCallback) -> None:
        """Start watching runs; ``on_exit`` hears every run that ends."""

    @abc.abstractmethod
    def stop(self, *, keep_runs: bool = False) -> None:
        """Stop watching runs; stop the runs too unless ``keep_runs`` (the next master on the
        same data adopts kept runs)."""

    # -- capacity and allocation -------------------------------------------------------------
    #: Whether ``resources.resource_pool`` selects capacity (False: one pool, names ignored).
    has_pools: bool = False
    #: Whether capacity changes on its own (nodes join a cluster): the engine then retries
    #: queued trials every second instead of only on its own events.
    elastic: bool = False

    @property
    @abc.abstractmethod
    def total_slots(self) -> int:
        """All slots this resource manager can hand out."""

    @property
    @abc.abstractmethod
    def free_slots(self) -> int:
        """Slots not held by an allocation."""

    @abc.abstractmethod
    def request(self, trial_id: int, slots: int, pool: str = "") -> None:
        """Queue ``trial_id`` for a gang of ``slots`` in resource pool ``pool`` ("" is the
        default pool); no-op when queued or allocated."""

    @abc.abstractmethod
    def withdraw(self, trial_id: int) -> bool:
        """Take a trial out of the queue; True if it was queued."""

    @abc.abstractmethod
    def release(self, trial_id: int) -> None:
        """Give back the slots of a trial whose run ended."""

    @abc.abstractmethod
    def allocate(self) -> list[Allocation]:
        """Grant queued trials that now fit, in queue order."""

    # -- runs ------------------------------------------------------------------------------
    @abc.abstractmethod
    def start_run(self, spec: LaunchSpec) -> None:
        """Start run ``spec.run_id`` of ``spec.trial_id`` in its allocation."""

    @abc.abstractmethod
    def terminate(self, trial_id: int, run_id: int) -> bool:
        """Ask the run to stop (SIGTERM locally); False if that run is not the live one."""

    @abc.abstractmethod
    def kill(self, trial_id: int, run_id: int) -> bool:
        """Kill the run's whole gang now; False if that run is not the live one."""

    @abc.abstractmethod
    def live_runs(self) -> list[LiveRun]:
        """Runs left alive by a previous master process (found on start)."""

    @abc.abstractmethod
    def adopt(self, run: LiveRun, slots: int) -> bool:
        """Watch a run found by :meth:`live_runs` and hold its slots.

        Returns False (and changes nothing) when the run cannot be verified as the one this
        resource manager started for that trial and run id.
        """

    @abc.abstractmethod
    def discard(self, run: LiveRun) -> None:
        """Kill a run found by :meth:`live_runs` that the engine will not adopt."""

    # -- files -----------------------------------------------------------------------------
    @abc.abstractmethod
    def trial_paths(self, trial_id: int) -> list[pathlib.Path]:
        """Directories holding a trial's runs (removed when its experiment is deleted)."""

    @abc.abstractmethod
    def experiment_paths(self, experiment_id: int) -> list[pathlib.Path]:
        """Directories holding an experiment's unpacked model code."""
