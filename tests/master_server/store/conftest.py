"""Fixtures of the store conformance suite: a fresh store per test, on SQLite and PostgreSQL.

* SQLite: a real database file in the test's ``tmp_path``.
* PostgreSQL (marked ``postgres``; deselect with ``-m "not postgres"``): a throwaway schema
  per test in the database at ``$DETSDK_TEST_PG_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``), selected through
  ``options=-csearch_path=<schema>`` and dropped afterwards, so tests never see each other's
  rows and several test runs can share one server.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # the suite runs from a plain checkout too (no installed package)
    import master_server  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the tests are started
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from master_server.store import SQLStore, open_store

PG_URL = os.environ.get("DETSDK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    """An autocommit psycopg connection for creating and dropping test schemas."""
    try:
        import psycopg

        conn = psycopg.connect(
            PG_URL.replace("postgresql+psycopg://", "postgresql://"),
            autocommit=True,
            connect_timeout=5,
        )
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    conn.execute("SET lock_timeout = '30s'")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    admin = request.getfixturevalue("pg_admin")
    schema = f"store_test_{uuid.uuid4().hex[:16]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    """A migrated store on a fresh database, closed after the test."""
    s = open_store(store_url)
    assert isinstance(s, SQLStore)
    try:
        yield s
    finally:
        s.close()
