"""Waiting without a thread: long polls park as asyncio tasks and are woken by the engine.

The engine and the log service change state on ordinary threads (RPC handlers run in a thread
pool, supervisors report exits from theirs). A long poll (preemption, searcher operations,
custom-search events, log follow) must not hold one of those threads while it waits, or a few
hundred live trials exhaust the pool. So a waiting caller is an asyncio task that awaits a
:class:`Waker`: thread-side code calls :meth:`Waker.notify` after a change, which wakes every
waiting task on the server's event loop; each re-checks its condition and parks again.

Notifications are coalesced: a burst of changes costs one wake-up of the loop, not one per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Longest a single long poll may wait, whatever the caller asked for.
MAX_LONG_POLL_S = 600.0


class Waker:
    """Wakes asyncio waiters on one event loop from any thread.

    Args:
        loop: the event loop the waiters run on.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._pending = False
        self._lock = threading.Lock()
        self._closed = False
        self.waiting = 0  # long polls parked on this waker now (read by tests and benchmarks)

    def notify(self) -> None:
        """Wake every current waiter (thread-safe; cheap when called in bursts)."""
        with self._lock:
            if self._pending or self._closed:
                return
            self._pending = True
        try:
            self._loop.call_soon_threadsafe(self._fire)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._lock:
                self._pending = False

    def _fire(self) -> None:
        with self._lock:
            self._pending = False
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """Wake everyone one last time; later waits return at once."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def current(self) -> asyncio.Event:
        """The event the next notification sets. Take it *before* checking the condition, so a
        change between the check and the wait is not lost."""
        return self._event


async def long_poll(
    waker: Waker,
    check: Callable[[], Awaitable[tuple[bool, T]]],
    timeout_s: float,
) -> T:
    """Await ``check`` until it says ready, the deadline passes, or the waker closes.

    Args:
        waker: what wakes this poll after a change.
        check: returns (ready, value); called once at the start and after every wake-up.
        timeout_s: how long to wait at most (clamped to [0, :data:`MAX_LONG_POLL_S`]).

    Returns:
        The value of the last check.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, min(timeout_s, MAX_LONG_POLL_S))
    while True:
        event = waker.current()
        ready, value = await check()
        left = deadline - loop.time()
        if ready or left <= 0 or waker.closed:
            return value
        waker.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)
        finally:
            waker.waiting -= 1
