"""Starting runs off the engine's lock.

Starting a run is slow next to the engine's other work: the local resource manager copies the
experiment's model directory (up to ``max_model_bytes``) into the run directory, writes its
files and waits for the zygote to fork the supervisor; the Ray one creates a placement group.
Done under the engine's lock, every other caller (metric reports, long polls, SDK calls) waits
for it. Here the engine decides under its lock (the trial is RUNNING with its new run id, in
memory and in the database) and hands the start to one launch thread, which starts runs in the
order they were asked for.

A stop order for a run that is not started yet is not lost: a kill or terminate of a queued
run means it is never started, and its exit is reported as a kill; one that comes while the
run is being started is carried out as soon as the start returns. A start that fails is
reported to the engine, which fails the run as it did when starts were made in place.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from master_server.rm.base import LaunchSpec, ResourceManager

logger = logging.getLogger(__name__)

#: The exit codes reported for a run stopped before it was started (what a process the signal
#: ended reports).
_STOPPED_BEFORE_START = {"kill": -int(signal.SIGKILL), "terminate": -int(signal.SIGTERM)}


@dataclass
class _Start:
    spec: LaunchSpec
    stop: str | None = None  # "terminate" or "kill" asked before the start returned


class Launches:
    """The engine's queue of run starts, worked by one thread (started at the first start).

    Args:
        rm: where runs are started.
        on_exit: told ``(trial_id, run_id, exit_code)`` of a run killed before it started.
        on_failed: told ``(trial_id, run_id, why)`` of a run whose start failed.
    """

    def __init__(
        self,
        rm: ResourceManager,
        *,
        on_exit: Callable[[int, int, int], None] | None = None,
        on_failed: Callable[[int, int, str], None] | None = None,
    ) -> None:
        self.rm = rm
        self.on_exit = on_exit
        self.on_failed = on_failed
        self._cond = threading.Condition()
        self._queue: collections.deque[_Start] = collections.deque()
        self._open: dict[tuple[int, int], _Start] = {}  # queued or being started
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, spec: LaunchSpec) -> None:
        """Start the run ``spec`` describes soon, in the launch thread (never blocks)."""
        with self._cond:
            if self._closed:
                return
            start = _Start(spec)
            self._queue.append(start)
            self._open[(spec.trial_id, spec.run_id)] = start
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="launches", daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """Runs asked for and not started yet (queued or being started)."""
        with self._cond:
            return len(self._open)

    def terminate(self, trial_id: int, run_id: int) -> bool:
        """SIGTERM the run (see :meth:`ResourceManager.terminate`); one not started yet is
        never started. False if the run is not live."""
        if self._stop_open(trial_id, run_id, "terminate"):
            return True
        return self.rm.terminate(trial_id, run_id)

    def kill(self, trial_id: int, run_id: int) -> bool:
        """Kill the run (see :meth:`ResourceManager.kill`); one not started yet is never
        started. False if the run is not live."""
        if self._stop_open(trial_id, run_id, "kill"):
            return True
        return self.rm.kill(trial_id, run_id)

    def _stop_open(self, trial_id: int, run_id: int, how: str) -> bool:
        with self._cond:
            start = self._open.get((trial_id, run_id))
            if start is None:
                return False
            if start.stop != "kill":  # a kill outranks a terminate
                start.stop = how
            return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Start nothing more: queued runs are dropped (the trial is still RUNNING in the
        database, so the next master reruns it), a start under way is waited for."""
        with self._cond:
            self._closed = True
            for start in self._queue:
                self._open.pop((start.spec.trial_id, start.spec.run_id), None)
            self._queue.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                start = self._queue.popleft()
                stop_first = start.stop
            spec = start.spec
            key = (spec.trial_id, spec.run_id)
            if stop_first is not None:
                with self._cond:
                    self._open.pop(key, None)
                logger.info("trial %d run %d: stopped before it started", *key)
                try:
                    if self.on_exit is not None:
                        self.on_exit(*key, _STOPPED_BEFORE_START[stop_first])
                except Exception:
                    logger.exception("trial %d run %d: exit handling failed", *key)
                continue
            try:
                self.rm.start_run(spec)
            except Exception as e:
                with self._cond:
                    self._open.pop(key, None)
                logger.exception("trial %d: launch failed", spec.trial_id)
                try:
                    if self.on_failed is not None:
                        self.on_failed(*key, f"launch failed: {e}")
                except Exception:
                    logger.exception("trial %d run %d: launch failure handling failed", *key)
                continue
            with self._cond:
                self._open.pop(key, None)
                stop_now = start.stop
            # A stop asked while the start was under way: the run is known to the RM now.
            if stop_now == "kill":
                self.rm.kill(*key)
            elif stop_now == "terminate":
                self.rm.terminate(*key)
