"""The keyed waker: a change wakes the polls of its key (and the catch-all channel) only."""

from __future__ import annotations

import asyncio

from master_server.waiting import Waker, long_poll


async def _settle() -> None:
    """Let callbacks scheduled with call_soon_threadsafe run (two loop turns)."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_key_wakes_its_waiters_and_the_catch_all_only() -> None:
    async def main() -> None:
        waker = Waker(asyncio.get_running_loop())
        with waker.watching(1), waker.watching(2), waker.watching(None):
            one, two, anything = waker.current(1), waker.current(2), waker.current(None)
            waker.notify(2)
            await _settle()
            assert two.is_set() and anything.is_set() and not one.is_set()
            assert waker.current(2) is not two  # the next change of key 2 needs a new event
            waker.notify(None)
            await _settle()
            assert one.is_set()

    asyncio.run(main())


def test_a_burst_of_notifications_is_one_wake_up() -> None:
    async def main() -> None:
        waker = Waker(asyncio.get_running_loop())
        fired = 0
        real_fire = waker._fire

        def counting_fire() -> None:
            nonlocal fired
            fired += 1
            real_fire()

        waker._fire = counting_fire  # type: ignore[method-assign]
        with waker.watching(1), waker.watching(3):
            one, three = waker.current(1), waker.current(3)
            for key in (1, 2, 3, 1, 2):
                waker.notify(key)
            await _settle()
            assert fired == 1 and one.is_set() and three.is_set()

    asyncio.run(main())


def test_keys_nobody_watches_are_forgotten() -> None:
    async def main() -> None:
        waker = Waker(asyncio.get_running_loop())
        with waker.watching(7):
            with waker.watching(7):
                waker.current(7)
            assert 7 in waker._events  # still watched by the outer poll
        assert 7 not in waker._events and not waker._watchers

    asyncio.run(main())


def test_long_poll_rechecks_only_on_its_own_key() -> None:
    async def main() -> None:
        waker = Waker(asyncio.get_running_loop())
        checks = 0
        ready = False

        async def check() -> tuple[bool, str]:
            nonlocal checks
            checks += 1
            return ready, "done" if ready else "waiting"

        poll = asyncio.ensure_future(long_poll(waker, check, 30.0, key=5))
        await _settle()
        assert checks == 1 and waker.waiting == 1
        for other in range(100):
            waker.notify(other + 10)
        await _settle()
        assert checks == 1  # changes of other experiments cost this poll nothing
        ready = True
        waker.notify(5)
        assert await asyncio.wait_for(poll, 10) == "done"
        assert checks == 2 and waker.waiting == 0 and not waker._events

    asyncio.run(main())


def test_close_wakes_everyone_and_later_waits_return_at_once() -> None:
    async def main() -> None:
        waker = Waker(asyncio.get_running_loop())

        async def never() -> tuple[bool, int]:
            return False, 0

        poll = asyncio.ensure_future(long_poll(waker, never, 30.0, key=1))
        await _settle()
        waker.close()
        assert await asyncio.wait_for(poll, 10) == 0
        assert await asyncio.wait_for(long_poll(waker, never, 30.0, key=2), 10) == 0
        waker.notify(3)  # after close: ignored, no error

    asyncio.run(main())
