"""The local resource manager: this machine's slots (FIFO gang scheduler) and supervisors.

It wraps :class:`~master_server.scheduler.Scheduler` (capacity, gang allocation) and
:class:`~master_server.launcher.LocalLauncher` (run directories, supervisor processes, reaping).
"""

from __future__ import annotations

import logging
import pathlib
import signal
from collections.abc import Callable

from master_server.launcher import LocalLauncher, TokenFactory, discard_run, find_live_runs
from master_server.rm.base import Allocation, ExitCallback, LaunchSpec, LiveRun, ResourceManager
from master_server.scheduler import Scheduler

logger = logging.getLogger(__name__)


class LocalResourceManager(ResourceManager):
    """``slots`` slots on this machine; each run is a supervisor process in its own session.

    Args:
        data_dir: the master's data directory (run directories live under ``runs/``).
        slots: how many slots to hand out.
        master_address: the address trials call back (read when a run starts).
        trial_token: makes each run's trial-scoped token (``DET_SESSION_TOKEN``).
        cert_file: the master's TLS certificate trials must trust, if any.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        slots: int,
        master_address: Callable[[], str],
        *,
        trial_token: TokenFactory,
        cert_file: str | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._scheduler = Scheduler(slots)
        self.launcher = LocalLauncher(
            data_dir, master_address, trial_token=trial_token, cert_file=cert_file
        )

    def start(self, on_exit: ExitCallback) -> None:
        self.launcher.start(on_exit)

    def stop(self, *, keep_runs: bool = False) -> None:
        self.launcher.stop(keep_runs=keep_runs)

    @property
    def total_slots(self) -> int:
        return self._scheduler.total_slots

    @property
    def free_slots(self) -> int:
        return self._scheduler.free_slots

    def request(self, trial_id: int, slots: int) -> None:
        self._scheduler.enqueue(trial_id, slots)

    def withdraw(self, trial_id: int) -> bool:
        return self._scheduler.dequeue(trial_id)

    def release(self, trial_id: int) -> None:
        self._scheduler.release(trial_id)

    def allocate(self) -> list[Allocation]:
        return [Allocation(a.trial_id, a.slots) for a in self._scheduler.schedule()]

    def start_run(self, spec: LaunchSpec) -> None:
        self.launcher.launch(spec)

    def terminate(self, trial_id: int, run_id: int) -> bool:
        return self.launcher.signal(trial_id, run_id, signal.SIGTERM)

    def kill(self, trial_id: int, run_id: int) -> bool:
        return self.launcher.kill(trial_id, run_id)

    def live_runs(self) -> list[LiveRun]:
        return find_live_runs(self._data_dir)

    def adopt(self, run: LiveRun, slots: int) -> bool:
        if not self.launcher.adopt(run):
            return False
        self._scheduler.hold(run.trial_id, slots)
        return True

    def discard(self, run: LiveRun) -> None:
        discard_run(self._data_dir, run)

    def trial_paths(self, trial_id: int) -> list[pathlib.Path]:
        return [self._data_dir / "runs" / f"trial-{trial_id}"]

    def experiment_paths(self, experiment_id: int) -> list[pathlib.Path]:
        return [self._data_dir / "experiments" / str(experiment_id)]
