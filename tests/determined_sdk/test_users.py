"""Users from the SDK and ``detsdk user ...`` against a real master; the token cache."""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from determined_sdk import Determined, client
from determined_sdk._auth import auth_file, cached_token
from determined_sdk.cli import cli
from determined_sdk.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from master_server.app import Master


@pytest.fixture
def token_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    path = tmp_path / "cache" / "auth.json"
    monkeypatch.setenv("DETSDK_AUTH_FILE", str(path))
    monkeypatch.delenv("DET_USER", raising=False)
    monkeypatch.delenv("DET_PASS", raising=False)
    return path


@pytest.fixture
def run(sdk_master: Master, token_file: pathlib.Path) -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, **env: str) -> Result:
        return runner.invoke(
            cli,
            ["-m", sdk_master.address, *args],
            input=input,
            env={"COLUMNS": "250", "DETSDK_AUTH_FILE": str(token_file), **env},
        )

    return invoke


def test_cli_user_lifecycle(run: Callable[..., Result], token_file: pathlib.Path) -> None:
    r = run("user", "login", "admin", "--password", "")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "admin (admin)" in run("user", "whoami").stdout
    r = run("user", "create", "cli-dana", "--password", "pw1")
    assert r.exit_code == 0 and "Created user cli-dana" in r.stdout, r.output
    r = run("user", "create", "cli-dana", "--password", "pw1")
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = run("user", "create", "has space", "--password", "x")
    assert r.exit_code == 1 and "username" in r.stderr
    assert "cli-dana" in run("user", "list").stdout
    # dana logs in (prompted password), changes it, is deactivated by the admin.
    r = run("user", "login", "cli-dana", input="wrong\n")
    assert r.exit_code == 1 and "invalid username or password" in r.stderr
    r = run("user", "login", "cli-dana", input="pw1\n")
    assert r.exit_code == 0, r.output
    assert run("user", "whoami").stdout.strip() == "cli-dana"
    r = run("user", "create", "cli-erin", "--password", "x")
    assert r.exit_code == 1 and "admin" in r.stderr
    r = run("user", "change-password", "--old-password", "pw1", "--new-password", "pw2")
    assert r.exit_code == 0, r.output
    r = run("user", "logout")
    assert r.exit_code == 0 and "Logged out" in r.stdout
    r = run("user", "whoami", DET_USER="cli-dana", DET_PASS="pw2")
    assert r.stdout.strip() == "cli-dana", r.output
    assert run("user", "login", "admin", "--password", "").exit_code == 0
    assert run("user", "deactivate", "cli-dana").exit_code == 0
    r = run("user", "whoami", DET_USER="cli-dana", DET_PASS="pw2")
    assert r.exit_code == 1 and "deactivated" in r.stderr
    assert run("user", "deactivate", "nobody-here").exit_code == 1
    assert run("user", "activate", "cli-dana").exit_code == 0


def test_token_cache_is_per_master_and_reused(sdk_master: Master, token_file: pathlib.Path) -> None:
    d = Determined(sdk_master.address, "admin", "")
    cached = cached_token(d.session.address.url)
    assert cached is not None and cached == ("admin", d.session.token)
    assert auth_file() == token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # A new client with no credentials uses the cached token: no login call.
    again = Determined(sdk_master.address)
    assert again.session.token == d.session.token
    assert again.whoami().username == "admin"
    # Another master address has its own entry.
    assert cached_token("grpcs://elsewhere:1") is None
    d.logout()
    assert cached_token(d.session.address.url) is None
    again.close()


def test_module_level_login_and_bad_input(
    sdk_master: Master, token_file: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = client.login(sdk_master.address, "admin", "")
    assert d.whoami().admin
    with pytest.raises(UnauthenticatedError):
        client.login(sdk_master.address, "admin", "not-the-password")
    with pytest.raises(InvalidArgumentError, match="username"):
        d.create_user("", "x")
    with pytest.raises(InvalidArgumentError, match="password"):
        d.create_user("long-pw", "x" * 5000)
    with pytest.raises(NotFoundError, match="nobody"):
        d.set_user_active("nobody", False)
    d.create_user("sdk-fay", "f")
    with pytest.raises(AlreadyExistsError):
        d.create_user("sdk-fay", "f")
    monkeypatch.setenv("DET_USER", "sdk-fay")
    monkeypatch.setenv("DET_PASS", "f")
    fay = Determined(sdk_master.address)
    assert fay.whoami().username == "sdk-fay"
    with pytest.raises(PermissionDeniedError):
        fay.set_user_active("admin", False)
    with pytest.raises(PermissionDeniedError):
        fay.change_password("x", username="admin")
    assert os.environ["DET_USER"] == "sdk-fay"
    fay.close()
