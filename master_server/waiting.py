"""Waiting without a thread: long polls park as asyncio tasks and are woken by the engine.

The engine and the log service change state on ordinary threads (RPC handlers run in a thread
pool, supervisors report exits from theirs). A long poll (preemption, searcher operations,
custom-search events, log follow) must not hold one of those threads while it waits, or a few
hundred live trials exhaust the pool. So a waiting caller is an asyncio task that awaits a
:class:`Waker`: thread-side code calls :meth:`Waker.notify` with the key that changed (an
experiment or trial id), which wakes the tasks waiting on that key on the server's event loop;
each re-checks its condition and parks again.

Notifications are coalesced: a burst of changes costs one wake-up of the loop, not one per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Longest a single long poll may wait, whatever the caller asked for.
MAX_LONG_POLL_S = 600.0


class Waker:
    """Wakes asyncio waiters on one event loop from any thread, by key.

    A waiter waits on a key (an experiment id, a trial id) and is woken by changes to that key
    only, so one experiment's change does not make every long poll of the master re-check its
    condition (10,000 waiting trials would cost 10,000 checks per change). Key ``None`` is the
    channel of every change: its waiters wake on any notification, and ``notify(None)`` wakes
    every waiter.

    Args:
        loop: the event loop the waiters run on.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[Hashable, asyncio.Event] = {}  # touched on the loop only
        self._watchers: dict[Hashable, int] = {}  # polls interested in each key (loop only)
        self._pending: set[Hashable] = set()  # keys to wake at the next _fire
        self._wake_all = False
        self._lock = threading.Lock()
        self._closed = False
        self.waiting = 0  # long polls parked on this waker now (read by tests and benchmarks)

    def notify(self, key: Hashable = None) -> None:
        """Wake the waiters of ``key`` and of ``None`` (every waiter if ``key`` is None).

        Thread-safe; a burst of notifications costs one wake-up of the loop."""
        with self._lock:
            if self._closed:
                return
            scheduled = self._wake_all or bool(self._pending)
            if key is None:
                self._wake_all = True
            else:
                self._pending.add(key)
            if scheduled:
                return
        try:
            self._loop.call_soon_threadsafe(self._fire)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._lock:
                self._pending.clear()
                self._wake_all = False

    def _fire(self) -> None:
        with self._lock:
            keys, self._pending = self._pending, set()
            wake_all, self._wake_all = self._wake_all, False
        if wake_all:
            events, self._events = list(self._events.values()), {}
        else:
            events = [e for k in (*keys, None) if (e := self._events.pop(k, None)) is not None]
        for event in events:
            event.set()

    def close(self) -> None:
        """Wake everyone one last time; later waits return at once."""
        with self._lock:
            self._closed = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._fire_all)

    def _fire_all(self) -> None:
        events, self._events = list(self._events.values()), {}
        for event in events:
            event.set()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def current(self, key: Hashable = None) -> asyncio.Event:
        """The event the next notification of ``key`` sets (call on the loop, inside
        :meth:`watching`). Take it *before* checking the condition, so a change between the
        check and the wait is not lost."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
            if self._closed:
                event.set()
        return event

    @contextlib.contextmanager
    def watching(self, key: Hashable = None) -> Iterator[None]:
        """Hold an interest in ``key`` (call on the loop): its event is dropped when the last
        watcher leaves, so keys nobody waits on cost nothing."""
        self._watchers[key] = self._watchers.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._watchers[key] - 1
            if left:
                self._watchers[key] = left
            else:
                del self._watchers[key]
                self._events.pop(key, None)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for ``event``, taken from :meth:`current`."""
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            self.waiting -= 1


async def long_poll(
    waker: Waker,
    check: Callable[[], Awaitable[tuple[bool, T]]],
    timeout_s: float,
    key: Hashable = None,
) -> T:
    """Await ``check`` until it says ready, the deadline passes, or the waker closes.

    Args:
        waker: what wakes this poll after a change.
        check: returns (ready, value); called once at the start and after every wake-up.
        timeout_s: how long to wait at most (clamped to [0, :data:`MAX_LONG_POLL_S`]).
        key: the key whose changes can make ``check`` ready (None: any change).

    Returns:
        The value of the last check.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, min(timeout_s, MAX_LONG_POLL_S))
    with waker.watching(key):
        while True:
            event = waker.current(key)
            ready, value = await check()
            left = deadline - loop.time()
            if ready or left <= 0 or waker.closed:
                return value
            await waker.wait(event, left)
