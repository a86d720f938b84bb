"""The HTTP side of a master: off by default, port 0, busy ports, CLI, stop, the auth hook."""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from starlette.requests import Request

from determined_sdk.errors import UnauthenticatedError
from master_server.app import Master
from master_server.domain import LogLine
from master_server.web.api import create_app
from master_server.web.server import HttpServer
from tests.support import wait_for


def test_http_is_off_unless_asked(master: Master) -> None:
    assert master.http_url is None and master.http_port == 0


def test_port_zero_serves_and_stop_closes(master_factory: Callable[..., Master]) -> None:
    m = master_factory(http_port=0)
    assert m.http_url == f"http://127.0.0.1:{m.http_port}" and m.http_port > 0
    assert httpx.get(f"{m.http_url}/api/v1/master").json()["total_slots"] == 2
    url = m.http_url
    m.stop()
    assert m.http_url is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/v1/master", timeout=5)


def test_busy_port_fails_start_and_releases_everything(
    master_factory: Callable[..., Master], tmp_path: pathlib.Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        with pytest.raises(OSError):
            master_factory(http_port=busy, data_dir=tmp_path / "busy")
    # The same data directory starts cleanly afterwards (the failed start closed its store).
    m = master_factory(http_port=0, data_dir=tmp_path / "busy")
    assert httpx.get(f"{m.http_url}/").status_code == 200


@pytest.mark.slow
def test_command_line_http_port_file(tmp_path: pathlib.Path) -> None:
    port_file, http_file = tmp_path / "port", tmp_path / "http-port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "master_server",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--http-port",
            "0",
            "--http-port-file",
            str(http_file),
            "--log-level",
            "WARNING",
        ]
    )
    try:
        wait_for(lambda: port_file.exists() or proc.poll() is not None, 60, "the port file")
        assert proc.poll() is None
        http_port = int(http_file.read_text())
        r = httpx.get(f"http://127.0.0.1:{http_port}/api/v1/experiments", timeout=10)
        assert r.json()["experiments"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_stop_ends_open_log_streams(master_factory: Callable[..., Master]) -> None:
    """A browser following a live trial's logs does not hold the master's stop."""
    m = master_factory(http_port=0)
    _exp, trial = m.parts["experiments"].create_unmanaged_trial(
        "name: unmanaged\nsearcher: {name: single, metric: loss}\n", {}, 0, 0
    )
    m.parts["logs"].ship([LogLine(trial.id, time.time(), "hello from a notebook")])
    got: list[str] = []
    ended = threading.Event()

    def follow() -> None:
        url = f"{m.http_url}/api/v1/trials/{trial.id}/logs"
        try:
            with httpx.stream("GET", url, params={"follow": "true"}, timeout=60) as r:
                for line in r.iter_lines():
                    got.append(line)
        except httpx.HTTPError:
            pass  # the server going away mid-stream is what stop() does
        ended.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    wait_for(lambda: any("hello from a notebook" in x for x in got), 30, "the first line")
    t0 = time.monotonic()
    m.stop()
    assert ended.wait(30), "the stream ended"
    assert time.monotonic() - t0 < 20


def test_the_auth_hook_guards_every_api_route_and_answers_401(
    master_factory: Callable[..., Master],
) -> None:
    """The hook the token check of the auth issue plugs into (no auth is enforced today)."""
    m = master_factory()
    seen: list[str] = []

    def authenticate(request: Request) -> None:
        seen.append(request.url.path)
        if request.headers.get("authorization") != "Bearer good":
            raise UnauthenticatedError("missing or bad token")

    server = HttpServer(create_app(m.parts, authenticate=authenticate), "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        r = httpx.get(f"{base}/api/v1/experiments")
        assert r.status_code == 401
        assert r.json()["error"] == {
            "code": "UNAUTHENTICATED",
            "status": 401,
            "message": "missing or bad token",
            "field": None,
        }
        ok = httpx.get(f"{base}/api/v1/experiments", headers={"authorization": "Bearer good"})
        assert ok.status_code == 200
        assert httpx.get(f"{base}/api/v1/trials/1/logs").status_code == 401
        assert httpx.get(f"{base}/").status_code == 200  # the page itself; its API calls ask
        assert seen == ["/api/v1/experiments", "/api/v1/experiments", "/api/v1/trials/1/logs"]
    finally:
        server.stop()
