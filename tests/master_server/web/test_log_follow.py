"""REST log follows (server-sent events) hold no thread while they wait for new lines.

Starlette runs sync handlers and sync stream generators on anyio's pool of 40 threads; a follow
that waited in one of them for a live trial's next line would, 40 browser tabs later, leave every
other REST call waiting for a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from master_server.app import Master
from master_server.domain import LogLine
from master_server.web.api import create_app
from master_server.web.server import HttpServer
from tests.support import wait_for

API = "/api/v1"
#: More follows than anyio's default thread limit (40), which every sync handler shares.
FOLLOWERS = 48


class Followers:
    """``n`` SSE follows of one URL, as httpx async streams on one event loop of a thread."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.events: list[list[tuple[str, Any]]] = [[] for _ in range(n)]
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Followers:
        self.thread.start()
        return self

    async def _main(self) -> None:
        # Read timeout: the longest silence between two events of a parked follow in this test.
        timeout = httpx.Timeout(10, read=120)
        limits = httpx.Limits(max_connections=self.n + 1)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(self._follow(client, i) for i in range(self.n)))

    async def _follow(self, client: httpx.AsyncClient, i: int) -> None:
        event, data = "message", ""
        try:
            async with client.stream("GET", self.url, params={"follow": "true"}) as r:
                assert r.status_code == 200, r.status_code
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and data:
                        self.events[i].append((event, json.loads(data)))
                        if event == "end":
                            return
                        event, data = "message", ""
        except BaseException as e:
            self.errors.append(e)

    def messages(self, i: int) -> list[str]:
        return [x["message"] for ev, batch in self.events[i] if ev == "logs" for x in batch]

    def all_got(self, message: str) -> bool:
        return all(message in self.messages(i) for i in range(self.n))


def test_followers_of_a_live_trial_hold_no_thread(master_factory: Callable[..., Master]) -> None:
    m = master_factory(http_port=0)
    _exp, trial = m.parts["experiments"].create_unmanaged_trial(
        "name: followed\nsearcher: {name: single, metric: loss}\n", {}, 0, 0
    )
    logs = m.parts["logs"]
    logs.ship([LogLine(trial.id, time.time(), "backlog")])
    base = f"{m.http_url}{API}"
    followers = m._http.app.state.log_followers
    # One call first: the loopback quick-start check (an argon2 verify, slow on purpose) is
    # then cached instead of being made by every follow that arrives at once.
    assert httpx.get(f"{base}/master", timeout=30).status_code == 200
    fs = Followers(f"{base}/trials/{trial.id}/logs", FOLLOWERS).start()
    try:
        wait_for(lambda: fs.all_got("backlog") or fs.errors, 60, "every follower's backlog")
        assert not fs.errors, fs.errors
        wait_for(
            lambda: followers.waiting >= FOLLOWERS, 60, f"{FOLLOWERS} follows parked (no thread)"
        )

        t0 = time.perf_counter()
        try:
            r = httpx.get(f"{base}/trials/{trial.id}", timeout=5)
        except httpx.TimeoutException:
            raise AssertionError("an ordinary GET waited > 5 s behind the log follows") from None
        took = time.perf_counter() - t0
        assert r.status_code == 200 and r.json()["trial"]["id"] == trial.id
        assert took < 1.0, f"an ordinary GET took {took:.2f} s behind the log follows"

        # A new line reaches every follower; the trial's end ends every stream with `end`.
        logs.ship([LogLine(trial.id, time.time(), "news")])
        wait_for(lambda: fs.all_got("news") or fs.errors, 30, "the new line at every follower")
        assert not fs.errors, fs.errors
        r = httpx.post(f"{base}/trials/{trial.id}/kill", timeout=5)
        assert r.status_code == 200, r.text
        fs.thread.join(30)
        assert not fs.thread.is_alive(), "every stream ended"
    finally:
        if fs.thread.is_alive():  # old code / a failure above: free the follows, then stop
            m.parts["experiments"].kill_trial(trial.id)
            fs.thread.join(30)
    assert not fs.errors, fs.errors
    for i in range(FOLLOWERS):
        assert fs.messages(i) == ["backlog", "news"], (i, fs.events[i])
        assert fs.events[i][-1] == ("end", {}), (i, fs.events[i])
    wait_for(lambda: followers.streams == 0, 10, "every follow stream closed")
    assert followers.waiting == 0


def test_a_follower_that_goes_away_ends_its_stream(master_factory: Callable[..., Master]) -> None:
    m = master_factory(http_port=0)
    _exp, trial = m.parts["experiments"].create_unmanaged_trial(
        "name: left\nsearcher: {name: single, metric: loss}\n", {}, 0, 0
    )
    m.parts["logs"].ship([LogLine(trial.id, time.time(), "hello")])
    followers = m._http.app.state.log_followers
    url = f"{m.http_url}{API}/trials/{trial.id}/logs"
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=60)) as client,
        client.stream("GET", url, params={"follow": "true"}) as r,
    ):
        lines = r.iter_lines()
        wait_for(lambda: "hello" in next(lines), 30, "the first line")
        wait_for(lambda: followers.waiting == 1, 30, "the follow parked")
    # The client closed its connection: Starlette cancels the stream, which stops waiting.
    wait_for(lambda: followers.streams == 0, 30, "the stream ended after the client left")
    assert followers.waiting == 0


def test_stop_ends_parked_follows_at_once(
    master_factory: Callable[..., Master], caplog: pytest.LogCaptureFixture
) -> None:
    """A stopping master wakes parked follows: they end without the trial's `end` event (the
    browser reconnects to the next master) and the HTTP server need not wait for them."""
    m = master_factory(http_port=0)
    _exp, trial = m.parts["experiments"].create_unmanaged_trial(
        "name: stopped\nsearcher: {name: single, metric: loss}\n", {}, 0, 0
    )
    m.parts["logs"].ship([LogLine(trial.id, time.time(), "hello")])
    followers = m._http.app.state.log_followers
    fs = Followers(f"{m.http_url}{API}/trials/{trial.id}/logs", 4).start()
    wait_for(lambda: fs.all_got("hello") or fs.errors, 30, "every follower's first line")
    wait_for(lambda: followers.waiting == 4, 30, "the follows parked")
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        m.stop()
    fs.thread.join(30)
    assert not fs.thread.is_alive() and not fs.errors, fs.errors
    assert all(ev != "end" for events in fs.events for ev, _ in events)
    assert followers.streams == 0
    # uvicorn gives open streams 2 s, then cancels them; woken, they had ended by then.
    cancelled = [r.getMessage() for r in caplog.records if "timeout graceful" in r.getMessage()]
    assert not cancelled, cancelled


def test_a_stopped_http_server_stops_listening_to_the_logs(
    master_factory: Callable[..., Master],
) -> None:
    """An HTTP server over a master's services that stops (the master goes on) unregisters its
    follows' waker from the log service and ends their streams."""
    m = master_factory()
    logs = m.parts["logs"]
    before = len(logs._listeners)
    _exp, trial = m.parts["experiments"].create_unmanaged_trial(
        "name: server\nsearcher: {name: single, metric: loss}\n", {}, 0, 0
    )
    logs.ship([LogLine(trial.id, time.time(), "hello")])
    app = create_app(m.parts)
    server = HttpServer(app, "127.0.0.1", 0).start()
    followers = app.state.log_followers
    fs = Followers(f"http://127.0.0.1:{server.port}{API}/trials/{trial.id}/logs", 2).start()
    wait_for(lambda: followers.waiting == 2, 30, "the follows parked")
    assert len(logs._listeners) == before + 1
    server.stop()
    fs.thread.join(30)
    assert not fs.thread.is_alive()
    assert len(logs._listeners) == before and followers.streams == 0
