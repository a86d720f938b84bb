"""Store conformance for users, sessions, owners and settings (issue 10), on every backend."""

from __future__ import annotations

import pytest

from determined_sdk.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from master_server.domain import UserSession
from master_server.store.sql import SQLStore


def test_users(store: SQLStore) -> None:
    u = store.create_user("ann", "hash1", admin=True)
    assert (u.id, u.username, u.admin, u.active) == (1, "ann", True, True)
    with pytest.raises(AlreadyExistsError, match="ann"):
        store.create_user("ann", "x")
    with pytest.raises(InvalidArgumentError, match="username"):
        store.create_user(" ", "x")
    b = store.create_user("bo", "hash2")
    assert store.get_user(b.id) == b
    assert store.find_user_by_name("bo") == b and store.find_user_by_name("nobody") is None
    with pytest.raises(NotFoundError, match="user 99"):
        store.get_user(99)
    b2 = store.update_user(b.id, active=False, password_hash="h3")
    assert (b2.active, b2.password_hash, b2.admin) == (False, "h3", False)
    with pytest.raises(NotFoundError):
        store.update_user(99, active=True)
    assert [x.username for x in store.list_users()] == ["ann", "bo"]


def test_sessions(store: SQLStore) -> None:
    u = store.create_user("ann", "h")
    v = store.create_user("vic", "h")
    store.add_session(UserSession("a" * 64, u.id, 1.0, 10.0))
    store.add_session(UserSession("b" * 64, u.id, 1.0, 100.0))
    store.add_session(UserSession("c" * 64, v.id, 1.0, 100.0))
    assert store.find_session("a" * 64) == UserSession("a" * 64, u.id, 1.0, 10.0)
    assert store.find_session("z" * 64) is None
    assert store.delete_sessions(expired_before=50.0) == 1
    assert store.find_session("a" * 64) is None
    assert store.delete_sessions(user_id=u.id) == 1
    assert store.delete_sessions(token_hash="c" * 64) == 1
    assert store.delete_sessions() == 0


def test_owners_and_settings(store: SQLStore) -> None:
    u = store.create_user("ann", "h")
    v = store.create_user("vic", "h")
    assert store.find_owner("experiment", 5) is None
    store.set_owner("experiment", 5, u.id)
    store.set_owner("experiment", 6, v.id)
    store.set_owner("model", 5, v.id)
    store.set_owner("experiment", 6, u.id)  # overwrites
    assert store.find_owner("experiment", 6) == u.id
    assert store.owner_names("experiment", [5, 6, 7]) == {5: "ann", 6: "ann"}
    assert store.owner_names("model", list(range(2000))) == {5: "vic"}
    # A dense page of ids is read as one range; ids inside it but not asked for stay out.
    store.set_owner("experiment", 8, v.id)
    assert store.owner_names("experiment", [5, 7, 9, 10]) == {5: "ann"}
    assert store.owner_names("experiment", [6, 8, 10_000]) == {6: "ann", 8: "vic"}  # sparse
    assert store.owner_names("experiment", []) == {}
    with pytest.raises(InvalidArgumentError, match="kind"):
        store.set_owner("planet", 1, u.id)
    assert store.ensure_setting("k", "first") == "first"
    assert store.ensure_setting("k", "second") == "first"
