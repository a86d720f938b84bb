"""Client-side credentials: ``DET_USER``/``DET_PASS``, the cached token file, re-login.

The token cache is a JSON file, ``~/.detsdk/auth.json`` (or ``$DETSDK_AUTH_FILE``), mode 0600,
holding one ``{"username", "token"}`` per master address, as Determined keeps
``~/.determined/auth.json``. Where a client gets its token, first match wins:

1. the ``user``/``password`` it is given (``Determined(master, user, password)``,
   ``client.login``, ``detsdk -u``);
2. ``$DET_USER`` with ``$DET_PASS``;
3. the cached token of that master (``detsdk user login`` writes it);
4. ``admin`` with the empty password: what a loopback master started without
   ``--initial-admin-password`` has, so a local quick start needs no login step.

A call answered UNAUTHENTICATED (a session that expired) logs in again with 1, 2 or 4 and is
retried once; a cached token alone cannot be renewed, and the error says how to log in.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from dataclasses import dataclass

AUTH_FILE_ENV = "DETSDK_AUTH_FILE"
DEFAULT_USER = "admin"


@dataclass(frozen=True)
class Credentials:
    """A username and password to log in with."""

    username: str
    password: str


def auth_file() -> pathlib.Path:
    """Where the token cache lives."""
    env = os.environ.get(AUTH_FILE_ENV)
    return pathlib.Path(env) if env else pathlib.Path.home() / ".detsdk" / "auth.json"


def _read() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(auth_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, dict[str, str]]) -> None:
    path = auth_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tempfile  # only when a token is cached (never in a trial)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth-")  # made 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached_token(master: str) -> tuple[str, str] | None:
    """(username, token) cached for ``master``, if any."""
    entry = _read().get(master)
    if isinstance(entry, dict) and entry.get("token"):
        return str(entry.get("username", "")), str(entry["token"])
    return None


def cache_token(master: str, username: str, token: str) -> None:
    """Remember ``token`` for ``master`` (0600 file)."""
    data = _read()
    data[master] = {"username": username, "token": token}
    _write(data)


def drop_token(master: str) -> bool:
    """Forget the token of ``master``; whether there was one."""
    data = _read()
    if data.pop(master, None) is None:
        return False
    _write(data)
    return True


def env_credentials() -> Credentials | None:
    """``$DET_USER`` / ``$DET_PASS``, if ``DET_USER`` is set."""
    user = os.environ.get("DET_USER")
    if not user:
        return None
    return Credentials(user, os.environ.get("DET_PASS", ""))
