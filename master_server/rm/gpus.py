"""This machine's GPUs, and which of them each gang of the local backend gets.

A machine without CUDA has no GPUs and its slots are CPU slots, as they always were. With GPUs a
slot is one GPU: a gang of ``k`` slots gets ``k`` devices of its own, named to its processes by
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading

logger = logging.getLogger(__name__)


def count_gpus() -> int:
    """How many CUDA GPUs this machine has (``nvidia-smi --list-gpus``; 0 without it).

    ``nvidia-smi`` answers without loading CUDA or torch into the master; where it is missing
    but the NVIDIA driver is loaded, ``torch.cuda.device_count()`` is asked instead.
    """
    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            out = subprocess.run(
                [exe, "--list-gpus"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            return sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError) as e:
            logger.warning("nvidia-smi --list-gpus failed (%s); counting no GPUs", e)
            return 0
    if not os.path.isdir("/proc/driver/nvidia/gpus"):
        return 0  # no NVIDIA driver: do not pay for importing torch to hear "0"
    try:
        import torch
    except ImportError:
        return 0
    try:
        return int(torch.cuda.device_count())
    except Exception:
        return 0


class DeviceSlots:
    """Which GPU indices each trial holds (thread-safe: runs start off the engine's lock)."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))
        self._held: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def take(self, trial_id: int, slots: int) -> list[int]:
        """Give ``trial_id`` ``slots`` free devices (the lowest indices); its held ones again
        if it holds some already.

        Raises:
            ValueError: fewer than ``slots`` devices are free (the scheduler prevents this).
        """
        with self._lock:
            if trial_id in self._held:
                return list(self._held[trial_id])
            if slots > len(self._free):
                raise ValueError(f"trial {trial_id}: {slots} GPUs asked, {len(self._free)} free")
            got, self._free = self._free[:slots], self._free[slots:]
            self._held[trial_id] = got
            return list(got)

    def hold(self, trial_id: int, devices: list[int]) -> None:
        """Count ``devices`` as held by ``trial_id`` (an adopted run)."""
        with self._lock:
            self._free = sorted(self._free + self._held.pop(trial_id, []))
            self._free = [d for d in self._free if d not in devices]
            self._held[trial_id] = list(devices)

    def give_back(self, trial_id: int) -> None:
        """Free the devices of ``trial_id``."""
        with self._lock:
            self._free = sorted(self._free + self._held.pop(trial_id, []))

    def held(self, trial_id: int) -> list[int]:
        with self._lock:
            return list(self._held.get(trial_id, []))


def visible_devices(devices: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` naming ``devices``."""
    return ",".join(str(d) for d in devices)
