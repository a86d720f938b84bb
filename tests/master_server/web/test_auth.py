"""The REST API and web UI behind the master's users (issue 10) through a real master."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from determined_sdk import Determined
from determined_sdk.proto import master_pb2
from master_server.app import Master
from master_server.web.api import API_PREFIX, WRITE_RULES, create_app
from tests.support import Stubs, single_config


def test_rest_needs_an_admin_token_once_admin_has_a_password(
    master_factory: Callable[..., Master],
) -> None:
    m = master_factory(http_port=0, initial_admin_password="s3cret")
    base = f"http://127.0.0.1:{m.http_port}/api/v1"
    with httpx.Client(timeout=30) as http:
        r = http.get(f"{base}/experiments")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED"
        r = http.get(f"{base}/experiments", headers={"Authorization": "Bearer garbage"})
        assert r.status_code == 401

        stubs = Stubs.connect(m.address, token="")
        try:
            login = master_pb2.LoginRequest(username="admin", password="s3cret")
            admin_token = stubs.master.Login(login).token
        finally:
            stubs.channel.close()
        ok = http.get(f"{base}/experiments", headers={"Authorization": f"Bearer {admin_token}"})
        assert ok.status_code == 200, ok.text
        # Where a browser cannot set headers (server-sent events), the token may be a parameter.
        assert http.get(f"{base}/experiments", params={"token": admin_token}).status_code == 200


def test_rest_is_open_in_the_loopback_quick_start(master_factory: Callable[..., Master]) -> None:
    m = master_factory(http_port=0)
    with httpx.Client(timeout=30) as http:
        r = http.get(f"http://127.0.0.1:{m.http_port}/api/v1/experiments")
        assert r.status_code == 200, r.text


def test_rest_login_sets_a_session_cookie_and_logout_ends_it(
    master_factory: Callable[..., Master],
) -> None:
    m = master_factory(http_port=0, initial_admin_password="s3cret")
    base = f"http://127.0.0.1:{m.http_port}/api/v1"
    with httpx.Client(timeout=30) as http:
        for body, field in (
            ({"username": "admin"}, "password"),
            ({"password": "s3cret"}, "username"),
            ({"username": "admin", "password": 5}, "password"),
        ):
            r = http.post(f"{base}/auth/login", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["field"] == field
        r = http.post(f"{base}/auth/login", json=["admin", "s3cret"])
        assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
        r = http.post(f"{base}/auth/login", json={"username": "admin", "password": "wrong"})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert "detsdk_session" not in http.cookies

        r = http.post(f"{base}/auth/login", json={"username": "admin", "password": "s3cret"})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"detsdk_session={token};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        # The cookie alone lets the browser's requests through; it is gRPC's session token.
        assert http.get(f"{base}/experiments").status_code == 200
        stubs = Stubs.connect(m.address, token=token)
        try:
            assert stubs.master.GetMasterInfo(master_pb2.GetMasterInfoRequest()).version
        finally:
            stubs.channel.close()

        r = http.post(f"{base}/auth/logout")
        assert r.status_code == 200 and 'detsdk_session=""' in r.headers["set-cookie"]
        assert "detsdk_session" not in http.cookies
        assert http.get(f"{base}/experiments").status_code == 401
        assert http.get(f"{base}/experiments", params={"token": token}).status_code == 401


def test_rest_lets_a_user_read_everything_and_change_only_their_own(
    master_factory: Callable[..., Master],
) -> None:
    m = master_factory(http_port=0, initial_admin_password="s3cret")
    base = f"http://127.0.0.1:{m.http_port}/api/v1"
    cfg = single_config("python -c pass")
    cfg["environment"] = {"environment_variables": {"SECRET": "hunter2"}}
    with Determined(m.address, user="admin", password="s3cret") as admin:
        admin.create_user("alice", "alice-pw")
    theirs = Stubs.connect(m.address, password="s3cret").create(cfg, activate=False)
    mine = Stubs.connect(m.address, username="alice", password="alice-pw").create(
        cfg, activate=False
    )
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{base}/auth/login", json={"username": "alice", "password": "alice-pw"})
        assert r.status_code == 200, r.text
        listed = {e["id"]: e for e in http.get(f"{base}/experiments").json()["experiments"]}
        env = "environment_variables"
        assert listed[mine.id]["config"]["environment"][env] == {"SECRET": "hunter2"}
        assert listed[theirs.id]["config"]["environment"][env]["SECRET"].startswith("<hidden")
        got = http.get(f"{base}/experiments/{theirs.id}").json()["experiment"]
        assert "hunter2" not in json.dumps(got)

        r = http.patch(f"{base}/experiments/{mine.id}", json={"name": "mine"})
        assert r.status_code == 200 and r.json()["experiment"]["name"] == "mine"
        assert http.put(f"{base}/experiments/{mine.id}/labels/x").status_code == 200
        for method, path in (
            ("PATCH", f"/experiments/{theirs.id}"),
            ("PUT", f"/experiments/{theirs.id}/labels/x"),
            ("DELETE", f"/experiments/{theirs.id}/labels/x"),
            ("POST", f"/experiments/{theirs.id}/archive"),
            ("DELETE", f"/experiments/{theirs.id}"),
        ):
            r = http.request(method, base + path, json={"name": "x"})
            assert r.status_code == 403, (method, path, r.text)
            assert "alice" in r.json()["error"]["message"]
        r = http.delete(f"{base}/experiments/4242")
        assert r.status_code == 404  # a missing id says so before any refusal
        r = http.post(f"{base}/trials/4242/kill")
        assert r.status_code == 404


def test_every_rest_write_route_has_an_owner_rule(web_master: Master) -> None:
    paths = create_app(web_master.parts).openapi()["paths"]
    routes = [
        (method.upper(), path[len(API_PREFIX) :])
        for path, ops in paths.items()
        for method in ops
        if method not in ("get", "head") and not path.startswith(f"{API_PREFIX}/auth/")
    ]
    assert routes and sorted(routes) == sorted(WRITE_RULES)
