"""The local resource manager: this machine's slots (FIFO gang scheduler) and supervisors.

It wraps :class:`~master_server.scheduler.Scheduler` (capacity, gang allocation) and
:class:`~master_server.launcher.LocalLauncher` (run directories, supervisor processes, reaping).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
from collections.abc import Callable

from master_server.launcher import LocalLauncher, TokenFactory, discard_run, find_live_runs
from master_server.rm.base import Allocation, ExitCallback, LaunchSpec, LiveRun, ResourceManager
from master_server.rm.gpus import DeviceSlots, visible_devices
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
        gpus: this machine's GPU count (0: CPU slots, as on a machine without CUDA). With GPUs
            every slot is one GPU and a run sees only its gang's (``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        slots: int,
        master_address: Callable[[], str],
        *,
        trial_token: TokenFactory,
        cert_file: str | None = None,
        gpus: int = 0,
    ) -> None:
        if gpus and slots > gpus:
            raise ValueError(f"slots: {slots} GPU slots asked, this machine has {gpus} GPUs")
        self._data_dir = data_dir
        self._scheduler = Scheduler(slots)
        self.gpus = gpus
        self._devices = DeviceSlots(slots if gpus else 0)
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

    def request(self, trial_id: int, slots: int, pool: str = "") -> None:
        # One machine is one pool: a pool name is accepted and has no effect (as before).
        self._scheduler.enqueue(trial_id, slots)

    def withdraw(self, trial_id: int) -> bool:
        return self._scheduler.dequeue(trial_id)

    def release(self, trial_id: int) -> None:
        self._scheduler.release(trial_id)
        self._devices.give_back(trial_id)

    def allocate(self) -> list[Allocation]:
        out = [Allocation(a.trial_id, a.slots) for a in self._scheduler.schedule()]
        if self.gpus:
            for a in out:
                self._devices.take(a.trial_id, a.slots)
        return out

    def start_run(self, spec: LaunchSpec) -> None:
        if self.gpus:
            devices = self._devices.take(spec.trial_id, spec.slots)
            spec = dataclasses.replace(
                spec, env={**spec.env, "CUDA_VISIBLE_DEVICES": visible_devices(devices)}
            )
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
        if self.gpus:
            self._devices.hold(run.trial_id, self._adopted_devices(run, slots))
        return True

    def _adopted_devices(self, run: LiveRun, slots: int) -> list[int]:
        """The GPUs an adopted run was started with (from its ``launch.json``)."""
        path = self.launcher.run_dir(run.trial_id, run.run_id) / ".det" / "launch.json"
        try:
            text = json.loads(path.read_text())["env"].get("CUDA_VISIBLE_DEVICES", "")
            return [int(d) for d in text.split(",") if d.strip()]
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("trial %d: GPUs of adopted run %d unknown", run.trial_id, run.run_id)
            return self._devices.take(run.trial_id, slots)

    def discard(self, run: LiveRun) -> None:
        discard_run(self._data_dir, run)

    def trial_paths(self, trial_id: int) -> list[pathlib.Path]:
        return [self._data_dir / "runs" / f"trial-{trial_id}"]

    def experiment_paths(self, experiment_id: int) -> list[pathlib.Path]:
        return [self._data_dir / "experiments" / str(experiment_id)]
