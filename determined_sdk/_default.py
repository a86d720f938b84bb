"""The default client's slot, apart from the resource modules so no import loop forms.

Resources built without a session (``Trial(3)``) take the default client's session from here;
:mod:`determined_sdk.client` makes, replaces and reads the default client through here. The
factory that builds a client is registered by ``_client.py`` when it is imported, so this module
imports nothing of the SDK but the session type.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from determined_sdk._session import Session


class HasSession(Protocol):
    """A client: something with a session that can be closed."""

    @property
    def session(self) -> Session: ...

    def close(self) -> None: ...


_lock = threading.Lock()
_client: HasSession | None = None
_factory: Callable[[], HasSession] | None = None


def register_factory(factory: Callable[[], HasSession]) -> None:
    """Set how the default client is made on first use (``Determined()``)."""
    global _factory
    _factory = factory


def get() -> HasSession:
    """The default client, made on first use (from ``$DET_MASTER``)."""
    global _client
    with _lock:
        if _client is None or _client.session.closed:
            if _factory is None:
                import determined_sdk._client  # noqa: F401  (registers the factory)
            assert _factory is not None
            _client = _factory()
        return _client


def replace(new: HasSession | None) -> HasSession | None:
    """Make ``new`` the default client; return the one it replaced (the caller closes it)."""
    global _client
    with _lock:
        old, _client = _client, new
    return old
