"""The SQL store's users, sessions, owners and settings (issue 10), mixed into ``SQLStore``.

Kept apart from :mod:`master_server.store.sql` so the tables of one concern sit together; the
contract is in :mod:`master_server.store.base`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from determined_sdk.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from master_server.domain import User, UserSession
from master_server.store.base import _UNSET
from master_server.store.models import (
    MasterSettingRow,
    ResourceOwnerRow,
    UserRow,
    UserSessionRow,
)

U = UserRow.__table__.c
OWNER_KINDS = frozenset({"workspace", "project", "experiment", "model"})

_O = ResourceOwnerRow.__table__.c
_OWNED = (
    select(_O.resource_id, U.username)
    .join(UserRow, U.id == _O.user_id)
    .where(_O.kind == bindparam("kind"))
)
# Built once: a statement built per call costs several times its execution.
_OWNERS_BETWEEN = _OWNED.where(_O.resource_id.between(bindparam("lo"), bindparam("hi")))
_OWNERS_IN = _OWNED.where(_O.resource_id.in_(bindparam("ids", expanding=True)))
_USER_COLS = (U.id, U.username, U.password_hash, U.admin, U.active, U.created_at)


def _to_user(r: Any) -> User:
    return User(
        id=r[0],
        username=r[1],
        password_hash=r[2],
        admin=bool(r[3]),
        active=bool(r[4]),
        created_at=r[5],
    )


class AuthSQLMixin:
    """Users, sessions, owners and settings on the SQL store's engine."""

    _sqlite: bool

    if TYPE_CHECKING:  # provided by SQLStore

        def _read(self) -> contextlib.AbstractContextManager[Connection]: ...

        def _write(self) -> contextlib.AbstractContextManager[Connection]: ...

        def _upsert(self, table: Any, values: dict[str, Any], keys: list[str]) -> Any: ...

    # -- users -------------------------------------------------------------------------------
    def create_user(self, username: str, password_hash: str, *, admin: bool = False) -> User:
        """Create an active user; AlreadyExistsError if the name is taken."""
        if not isinstance(username, str) or not username.strip():
            raise InvalidArgumentError(f"username: must be a non-empty string, got {username!r}")
        dup = AlreadyExistsError(f"user {username!r} already exists")
        now = time.time()
        try:
            with self._write() as conn:
                if conn.scalar(select(U.id).where(U.username == username)) is not None:
                    raise dup
                res = conn.execute(
                    insert(UserRow).values(
                        username=username,
                        password_hash=password_hash,
                        admin=admin,
                        active=True,
                        created_at=now,
                    )
                )
                key = res.inserted_primary_key
                assert key is not None
                user_id = int(key[0])
        except IntegrityError:
            raise dup from None
        return User(user_id, username, password_hash, admin, True, now)

    def get_user(self, user_id: int) -> User:
        """The user with this id."""
        with self._read() as conn:
            row = conn.execute(select(*_USER_COLS).where(U.id == user_id)).first()
        if row is None:
            raise NotFoundError(f"user {user_id} not found")
        return _to_user(row)

    def find_user_by_name(self, username: str) -> User | None:
        """The user with this name, or None."""
        with self._read() as conn:
            row = conn.execute(select(*_USER_COLS).where(U.username == username)).first()
        return None if row is None else _to_user(row)

    def list_users(self) -> list[User]:
        """Every user, by id."""
        with self._read() as conn:
            return [_to_user(r) for r in conn.execute(select(*_USER_COLS).order_by(U.id))]

    def update_user(
        self,
        user_id: int,
        *,
        password_hash: str = _UNSET,
        admin: bool = _UNSET,
        active: bool = _UNSET,
    ) -> User:
        """Change the given fields of a user."""
        values = {
            k: v
            for k, v in (("password_hash", password_hash), ("admin", admin), ("active", active))
            if v is not _UNSET
        }
        with self._write() as conn:
            if values:
                res = conn.execute(update(UserRow).where(U.id == user_id).values(**values))
                if res.rowcount == 0:
                    raise NotFoundError(f"user {user_id} not found")
            row = conn.execute(select(*_USER_COLS).where(U.id == user_id)).first()
        if row is None:
            raise NotFoundError(f"user {user_id} not found")
        return _to_user(row)

    # -- sessions ----------------------------------------------------------------------------
    def add_session(self, session: UserSession) -> None:
        """Store a login session."""
        with self._write() as conn:
            conn.execute(
                insert(UserSessionRow).values(
                    token_hash=session.token_hash,
                    user_id=session.user_id,
                    created_at=session.created_at,
                    expires_at=session.expires_at,
                )
            )

    def find_session(self, token_hash: str) -> UserSession | None:
        """The session with this token hash, or None."""
        S = UserSessionRow.__table__.c
        with self._read() as conn:
            row = conn.execute(
                select(S.token_hash, S.user_id, S.created_at, S.expires_at).where(
                    S.token_hash == token_hash
                )
            ).first()
        return None if row is None else UserSession(row[0], row[1], row[2], row[3])

    def delete_sessions(
        self,
        *,
        token_hash: str | None = None,
        user_id: int | None = None,
        expired_before: float | None = None,
    ) -> int:
        """Delete sessions matching any of the given conditions; returns how many."""
        S = UserSessionRow.__table__.c
        conds: list[Any] = []
        if token_hash is not None:
            conds.append(S.token_hash == token_hash)
        if user_id is not None:
            conds.append(S.user_id == user_id)
        if expired_before is not None:
            conds.append(S.expires_at < expired_before)
        if not conds:
            return 0
        with self._write() as conn:
            return int(conn.execute(delete(UserSessionRow).where(or_(*conds))).rowcount)

    # -- owners ------------------------------------------------------------------------------
    @staticmethod
    def _kind(kind: str) -> str:
        if kind not in OWNER_KINDS:
            raise InvalidArgumentError(f"kind: must be one of {sorted(OWNER_KINDS)}, got {kind!r}")
        return kind

    def set_owner(self, kind: str, resource_id: int, user_id: int) -> None:
        """Record that ``user_id`` owns (kind, resource_id)."""
        values = {"kind": self._kind(kind), "resource_id": resource_id, "user_id": user_id}
        with self._write() as conn:
            conn.execute(self._upsert(ResourceOwnerRow, values, ["kind", "resource_id"]))

    def find_owner(self, kind: str, resource_id: int) -> int | None:
        """The owner's user id, or None."""
        O = ResourceOwnerRow.__table__.c  # noqa: E741
        with self._read() as conn:
            v = conn.scalar(
                select(O.user_id).where(O.kind == self._kind(kind), O.resource_id == resource_id)
            )
        return None if v is None else int(v)

    def owner_names(self, kind: str, resource_ids: Sequence[int]) -> dict[int, str]:
        """Owner usernames of the given resources."""
        ids = sorted(set(resource_ids))
        out: dict[int, str] = {}
        if not ids:
            return out
        kind = self._kind(kind)
        with self._read() as conn:
            if ids[-1] - ids[0] < 2 * len(ids):
                # Mostly consecutive ids (a page of a list): one range read beats many IN lists.
                rows = conn.execute(_OWNERS_BETWEEN, {"kind": kind, "lo": ids[0], "hi": ids[-1]})
                wanted = set(ids)
                out.update({int(r[0]): str(r[1]) for r in rows if r[0] in wanted})
                return out
            for chunk in _chunks(ids, 500):
                rows = conn.execute(_OWNERS_IN, {"kind": kind, "ids": chunk})
                out.update({int(r[0]): str(r[1]) for r in rows})
        return out

    # -- settings ----------------------------------------------------------------------------
    def ensure_setting(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the stored value."""
        K = MasterSettingRow.__table__.c
        with self._write() as conn:
            old = conn.scalar(select(K.value).where(K.key == key))
            if old is not None:
                return str(old)
            conn.execute(insert(MasterSettingRow).values(key=key, value=value))
        return value


def _chunks(ids: Sequence[int], n: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]
