"""PostgreSQL connections the server dropped while the master was idle are replaced unseen."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from master_server.store import open_store
from master_server.store import sql as sql_store

pytestmark = pytest.mark.postgres


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    pg_schema_url: str, pg_admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"detsdk-test-{uuid.uuid4().hex[:12]}"
    store = open_store(f"{pg_schema_url}&application_name={name}")
    try:
        assert store.get_workspace(1).id == 1
        # The server ends every connection of this store (as a restart would) while it idles.
        ended = pg_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchall()
        assert ended and all(row[0] for row in ended)
        monkeypatch.setattr(sql_store, "PING_IDLE_S", 0.0)  # every pooled one counts as idle
        # The next calls get a live connection: no error reaches the caller.
        for _ in range(3):
            assert store.get_workspace(1).id == 1
    finally:
        store.close()


def test_a_busy_connection_the_server_dropped_fails_one_call_as_unavailable(
    pg_schema_url: str, pg_admin: Any
) -> None:
    """Without the idle check (a connection used a moment ago), the call that finds it dropped
    fails with an error the master answers UNAVAILABLE, and the pool heals for the next one."""
    from master_server.store.errors import database_unavailable

    name = f"detsdk-test-{uuid.uuid4().hex[:12]}"
    store = open_store(f"{pg_schema_url}&application_name={name}")
    try:
        store.get_workspace(1)
        pg_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        with pytest.raises(Exception) as info:
            store.get_workspace(1)
        assert database_unavailable(info.value) is not None, info.value
        assert store.get_workspace(1).id == 1
    finally:
        store.close()
