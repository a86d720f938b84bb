"""User management: the service behind ``UserService`` (whoami, create, list, passwords, active).

Every method reads the caller from :func:`master_server.auth.principal.require` and checks what
it may do here, so any transport gets the same rules.
"""

from __future__ import annotations

from determined_sdk.errors import FailedPreconditionError, PermissionDeniedError
from master_server.auth.core import (
    Authenticator,
    check_password,
    check_username,
    require_admin,
    user_of,
)
from master_server.auth.passwords import hash_password, verify_password
from master_server.auth.principal import Principal, require
from master_server.domain import User
from master_server.store.base import Store


class UserService:
    """Users and sessions for the caller of the current request."""

    def __init__(self, store: Store, auth: Authenticator) -> None:
        self.store = store
        self.auth = auth

    def _user_principal(self, what: str) -> Principal:
        p = require()
        if p.is_trial:
            raise PermissionDeniedError(f"{what}: a trial token cannot do this; use a user login")
        return p

    def login(self, username: str, password: str) -> tuple[str, float]:
        """A new session token for ``username`` and when it expires."""
        token, session = self.auth.login(username, check_password(password))
        return token, session.expires_at

    def logout(self) -> None:
        """End the caller's session."""
        self.auth.logout(self._user_principal("logout"))

    def me(self) -> tuple[User | None, Principal]:
        """The caller's user record (None for a trial token of an ownerless experiment)."""
        p = require()
        if p.user_id == 0:
            return None, p
        return self.store.get_user(p.user_id), p

    def create(self, username: str, password: str, *, admin: bool) -> User:
        """Create a user (admins only)."""
        require_admin(self._user_principal("create user"), "create user")
        return self.store.create_user(
            check_username(username), hash_password(check_password(password)), admin=admin
        )

    def list(self) -> list[User]:
        """Every user (any logged-in user may list them, as in Determined)."""
        self._user_principal("list users")
        return self.store.list_users()

    def change_password(self, username: str, old_password: str, new_password: str) -> None:
        """Change a password: one's own with the old one, anyone's as an admin.

        An admin's reset of someone else's password ends that user's sessions.
        """
        p = self._user_principal("change password")
        target = user_of(self.store, username) if username else self.store.get_user(p.user_id)
        check_password(new_password, "new_password")
        if target.id != p.user_id:
            require_admin(p, f"change the password of {target.username!r}")
        elif not p.admin and not verify_password(target.password_hash, old_password):
            raise PermissionDeniedError("old_password: does not match")
        self.store.update_user(target.id, password_hash=hash_password(new_password))
        if target.id != p.user_id:  # an admin reset: whoever had their sessions is out
            self.store.delete_sessions(user_id=target.id)
            self.auth.forget_sessions()

    def set_active(self, username: str, active: bool) -> User:
        """Deactivate (ending every session) or reactivate a user; admins only."""
        p = self._user_principal("set user active")
        require_admin(p, "deactivate or activate a user")
        target = user_of(self.store, username)
        if target.id == p.user_id and not active:
            raise FailedPreconditionError("an admin cannot deactivate themselves")
        user = self.store.update_user(target.id, active=active)
        if not active:
            self.store.delete_sessions(user_id=target.id)
            self.auth.forget_sessions()
        return user
