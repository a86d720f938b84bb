"""Authentication, independent of the transport: tokens in, a :class:`Principal` out.

:meth:`Authenticator.authenticate` takes the full RPC method name (``/detsdk.v1.X/Y``) and the
request's metadata (key/value pairs) and returns the caller's principal, or raises
:class:`~determined_sdk.errors.UnauthenticatedError`. The gRPC interceptor
(:mod:`master_server.auth.interceptor`) calls it; an HTTP middleware can call it the same way
with its headers.

Two kinds of token travel as ``authorization: Bearer <token>``:

* **user sessions**: random tokens made by :meth:`login`; the database keeps only their
  SHA-256 and an expiry (``session_ttl_s``, default 7 days).
* **trial tokens**: ``dettrial.<trial>.<run>.<hmac>``, signed with a key kept in the database.
  One is valid exactly while its run is the trial's current, live run, so it never expires
  under a long-running trial and dies with the run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable

from determined_sdk.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from master_server.auth.passwords import MAX_PASSWORD_CHARS, hash_password, verify_password
from master_server.auth.principal import Principal
from master_server.domain import TrialState, User, UserSession
from master_server.store.base import Store

logger = logging.getLogger(__name__)

#: Calls that need no token.
PUBLIC_METHODS = frozenset(
    {
        "/detsdk.v1.MasterService/Login",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)
DEFAULT_SESSION_TTL_S = 7 * 24 * 3600.0
INITIAL_ADMIN = "admin"
_TRIAL_PREFIX = "dettrial."
_KEY_SETTING = "trial_token_key"
#: Trial states in which a run is alive (its token works).
_LIVE = frozenset(
    {
        TrialState.RUNNING,
        TrialState.STOPPING_COMPLETED,
        TrialState.STOPPING_CANCELED,
        TrialState.STOPPING_ERROR,
    }
)
_LOGIN_HINT = "log in with `detsdk user login` or Determined(master, user, password)"


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a session token: what the database stores."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        v = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = v.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("authorization: expected 'Bearer <token>'")
        return token.strip()
    return None


def check_username(username: str) -> str:
    """A valid username: 1-128 printable characters without spaces."""
    if not username or len(username) > 128 or not username.isprintable() or " " in username:
        raise InvalidArgumentError(
            f"username: 1-128 printable characters without spaces, got {username[:40]!r}"
        )
    return username


def check_password(password: str, field: str = "password") -> str:
    """A password short enough to hash (the empty one is allowed, as Determined allows it)."""
    if len(password) > MAX_PASSWORD_CHARS or "\x00" in password:
        raise InvalidArgumentError(f"{field}: at most {MAX_PASSWORD_CHARS} characters, no NUL")
    return password


_CACHE_S = 5.0  # how long a session's principal is remembered
_CACHE_MAX = 100_000


class Authenticator:
    """Logs users in and out, makes trial tokens, and turns tokens into principals.

    Args:
        store: The master's store.
        session_ttl_s: How long a login session lasts, in seconds.
    """

    def __init__(self, store: Store, *, session_ttl_s: float = DEFAULT_SESSION_TTL_S) -> None:
        if session_ttl_s <= 0:
            raise InvalidArgumentError(f"session_ttl_s: must be > 0, got {session_ttl_s}")
        self.store = store
        self.session_ttl_s = session_ttl_s
        self._key = bytes.fromhex(store.ensure_setting(_KEY_SETTING, secrets.token_hex(32)))
        # Every call is authenticated: a session's principal is remembered for a few seconds
        # (token hash -> (valid until, principal)) instead of 2-3 reads per call. Logout, a
        # password change and deactivation forget them at once (:meth:`forget_sessions`).
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._cache_lock = threading.Lock()
        self._owner_names: dict[int, tuple[int, str]] = {}  # experiment -> (user id, name)
        #: The engine's word on a run: its experiment id while it runs that run, else None
        #: (then the database decides). Spares a trial's every report a read of its row.
        self.live_run: Callable[[int, int], int | None] | None = None

    # -- start-up ------------------------------------------------------------------------------
    def bootstrap(self, initial_admin_password: str | None) -> bool:
        """Create the ``admin`` user on the first start; return whether it was created.

        Args:
            initial_admin_password: Its password; None makes it with the empty password (only
                allowed on a loopback master; the caller checks).
        """
        if self.store.list_users():
            return False
        password = check_password(initial_admin_password or "", "initial admin password")
        try:
            self.store.create_user(INITIAL_ADMIN, hash_password(password), admin=True)
        except Exception:  # another master process on the same database made it first
            if self.store.find_user_by_name(INITIAL_ADMIN) is None:
                raise
            return False
        if not password:
            logger.warning(
                "created user 'admin' with an EMPTY password (loopback master); set one with "
                "`detsdk user change-password` or start with --initial-admin-password"
            )
        return True

    # -- sessions ------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> tuple[str, UserSession]:
        """Check the password and open a session; returns (token, session).

        Raises:
            UnauthenticatedError: Unknown user, wrong password (one message for both), or a
                deactivated user.
        """
        if not username:
            raise InvalidArgumentError("username: must not be empty")
        user = self.store.find_user_by_name(username) if len(username) <= 128 else None
        if not verify_password(user.password_hash if user else None, password) or user is None:
            raise UnauthenticatedError(f"invalid username or password for user {username[:128]!r}")
        if not user.active:
            raise UnauthenticatedError(f"user {username!r} is deactivated; ask an admin")
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = UserSession(token_hash(token), user.id, now, now + self.session_ttl_s)
        self.store.add_session(session)
        # Expired sessions are swept now and then, not on every call.
        if secrets.randbelow(50) == 0:
            self.store.delete_sessions(expired_before=now)
        return token, session

    def logout(self, principal: Principal) -> None:
        """End the caller's session (a trial token has none to end)."""
        if principal.token_hash:
            self.store.delete_sessions(token_hash=principal.token_hash)
            with self._cache_lock:
                self._cache.pop(principal.token_hash, None)

    def forget_sessions(self) -> None:
        """Drop every remembered session (users' passwords or active flags changed)."""
        with self._cache_lock:
            self._cache.clear()

    # -- trial tokens --------------------------------------------------------------------------
    def _sign(self, trial_id: int, run_id: int) -> str:
        msg = f"{trial_id}.{run_id}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def trial_token(self, trial_id: int, run_id: int) -> str:
        """The token of one run of a trial (given to the run by the launcher)."""
        return f"{_TRIAL_PREFIX}{trial_id}.{run_id}.{self._sign(trial_id, run_id)}"

    def _trial_principal(self, token: str) -> Principal:
        parts = token[len(_TRIAL_PREFIX) :].split(".")
        bad = UnauthenticatedError("invalid trial token")
        if len(parts) != 3 or not all(p.isascii() and p.isalnum() for p in parts):
            raise bad
        try:
            trial_id, run_id = int(parts[0]), int(parts[1])
        except ValueError:
            raise bad from None
        if not hmac.compare_digest(parts[2], self._sign(trial_id, run_id)):
            raise bad
        experiment_id = self.live_run(trial_id, run_id) if self.live_run is not None else None
        if experiment_id is None:  # not a run the engine is running now: ask the database
            try:
                trial = self.store.get_trial(trial_id)
            except NotFoundError:
                raise UnauthenticatedError(
                    f"trial token: trial {trial_id} no longer exists"
                ) from None
            if trial.run_id != run_id or trial.state not in _LIVE:
                raise UnauthenticatedError(
                    f"trial token: run {run_id} of trial {trial_id} has ended "
                    f"(current run {trial.run_id}, state {trial.state.value})"
                )
            experiment_id = trial.experiment_id
        known = self._owner_names.get(experiment_id)
        if known is None:
            owner_id = self.store.find_owner("experiment", experiment_id)
            name = self.store.get_user(owner_id).username if owner_id is not None else ""
            known = (owner_id or 0, name)
            if owner_id is not None:  # an experiment's owner never changes once recorded
                self._owner_names[experiment_id] = known
        owner, name = known[0] or None, known[1]
        return Principal(
            user_id=owner or 0,
            username=name,
            trial_id=trial_id,
            run_id=run_id,
            experiment_id=experiment_id,
        )

    # -- the check -----------------------------------------------------------------------------
    def authenticate_running_trial(
        self, metadata: Iterable[tuple[str, str | bytes]]
    ) -> Principal | None:
        """The principal of a valid trial token of a run the engine is running, found without
        touching the database (safe on the event loop); None when that cannot be told so
        (any other token, or a bad one): then :meth:`authenticate` decides."""
        token = bearer_token(metadata)
        if token is None or not token.startswith(_TRIAL_PREFIX) or self.live_run is None:
            return None
        parts = token[len(_TRIAL_PREFIX) :].split(".")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts[:2]):
            return None
        trial_id, run_id = int(parts[0]), int(parts[1])
        if not hmac.compare_digest(parts[2], self._sign(trial_id, run_id)):
            return None
        experiment_id = self.live_run(trial_id, run_id)
        known = self._owner_names.get(experiment_id) if experiment_id is not None else None
        if experiment_id is None or known is None:
            return None
        return Principal(
            user_id=known[0],
            username=known[1],
            trial_id=trial_id,
            run_id=run_id,
            experiment_id=experiment_id,
        )

    def authenticate(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]]
    ) -> Principal | None:
        """The caller of ``method``; None for a public method called without a token.

        Raises:
            UnauthenticatedError: No token, an unknown, malformed or expired one, or a
                deactivated user.
        """
        token = bearer_token(metadata) if method not in PUBLIC_METHODS else None
        if token is None:
            if method in PUBLIC_METHODS:
                return None
            raise UnauthenticatedError(f"{method}: no token; {_LOGIN_HINT}")
        if token.startswith(_TRIAL_PREFIX):
            return self._trial_principal(token)
        if len(token) > 256:
            raise UnauthenticatedError("invalid session token")
        h = token_hash(token)
        now = time.time()
        hit = self._cache.get(h)
        if hit is not None and now < hit[0]:
            return hit[1]
        session = self.store.find_session(h)
        if session is None:
            raise UnauthenticatedError(f"invalid or ended session; {_LOGIN_HINT}")
        if session.expires_at <= time.time():
            self.store.delete_sessions(token_hash=h)
            raise UnauthenticatedError(f"session expired; {_LOGIN_HINT}")
        user = self.store.get_user(session.user_id)
        if not user.active:
            raise UnauthenticatedError(f"user {user.username!r} is deactivated; ask an admin")
        p = Principal(
            user_id=user.id,
            username=user.username,
            admin=user.admin,
            token_hash=h,
            expires_at=session.expires_at,
        )
        with self._cache_lock:
            if len(self._cache) > _CACHE_MAX:
                self._cache.clear()
            self._cache[h] = (min(now + _CACHE_S, session.expires_at), p)
        return p


def require_admin(principal: Principal, what: str) -> None:
    """PermissionDeniedError unless ``principal`` is an admin."""
    if not principal.admin:
        raise PermissionDeniedError(f"{what}: only an admin may do this")


def user_of(store: Store, username: str) -> User:
    """The user named ``username``; NotFoundError naming it otherwise."""
    user = store.find_user_by_name(username) if username else None
    if user is None:
        raise NotFoundError(f"user {username!r} not found")
    return user
