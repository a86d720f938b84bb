"""Who is calling: the :class:`Principal` of the current request, held in a context variable.

The transport's interceptor sets it for the duration of one handler (in the thread or task that
runs the handler); the service layer reads it with :func:`current` / :func:`require`. Code that
runs outside a request (the engine's own threads) sees None and is not checked.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from determined_sdk.errors import UnauthenticatedError


@dataclass(frozen=True)
class Principal:
    """The caller of one request.

    Attributes:
        user_id: The user (for a trial token: the owner of the trial's experiment, 0 if none).
        username: That user's name.
        admin: Whether the user is an admin (always False for a trial token).
        trial_id: Set for a trial-scoped token: the only trial it may act on.
        run_id: The run of that trial the token was issued to.
        experiment_id: The trial's experiment (trial tokens only).
        token_hash: SHA-256 of a user session's token (for logout); "" for trial tokens.
        expires_at: When the session expires (unix seconds); 0 for trial tokens.
    """

    user_id: int
    username: str
    admin: bool = False
    trial_id: int | None = None
    run_id: int | None = None
    experiment_id: int | None = None
    token_hash: str = ""
    expires_at: float = 0.0

    @property
    def is_trial(self) -> bool:
        """True for a trial-scoped token."""
        return self.trial_id is not None


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "detsdk_principal", default=None
)


def current() -> Principal | None:
    """The principal of the request being handled, or None outside a request."""
    return _CURRENT.get()


def require() -> Principal:
    """The principal of the request being handled; UnauthenticatedError if there is none."""
    p = _CURRENT.get()
    if p is None:
        raise UnauthenticatedError("this call needs a logged-in user")
    return p


def set_principal(principal: Principal | None) -> None:
    """Set the current principal for the rest of this context (a call's own task)."""
    _CURRENT.set(principal)


@contextlib.contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Set the current principal for the body of the ``with`` block (then restore it)."""
    token = _CURRENT.set(principal)
    try:
        yield
    finally:
        _CURRENT.reset(token)
