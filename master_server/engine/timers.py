"""Deadlines: calls to make later, all served by one thread.

A stop request starts a grace period for its run (30 s by default), and a search of thousands
of short trials asks that of every trial it finishes. A ``threading.Timer`` per request is a
thread per request, alive for the whole grace period: at 10 trials/s that is hundreds of idle
threads. Here every deadline waits in one heap and one thread makes the calls when they fall
due, in deadline order.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Deadlines:
    """Calls functions at their deadlines from one daemon thread (started at the first call)."""

    def __init__(self, name: str = "deadlines") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()  # ties keep the order the calls were asked for in
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in ``delay_s`` seconds (at once when it is <= 0).

        An exception ``fn`` raises is logged; the other deadlines are kept.
        """
        with self._cond:
            if self._closed:
                return
            due = time.monotonic() + max(0.0, delay_s)
            heapq.heappush(self._heap, (due, next(self._seq), fn, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """How many calls are waiting for their deadline."""
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        """Drop the waiting calls and stop the thread (calls made after this are ignored)."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap:
                        left = self._heap[0][0] - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
                _, _, fn, args = heapq.heappop(self._heap)
            try:
                fn(*args)
            except Exception:
                logger.exception("a deadline call (%s) failed", getattr(fn, "__name__", fn))
