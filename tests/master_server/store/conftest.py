"""Fixtures of the store conformance suite: a fresh store per test, on SQLite and PostgreSQL.

* SQLite: a real database file in the test's ``tmp_path``.
* PostgreSQL (marked ``postgres``; deselect with ``-m "not postgres"``): a throwaway schema
  per test in the database at ``$DETSDK_TEST_PG_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``), selected through
  ``options=-csearch_path=<schema>`` and dropped afterwards, so tests never see each other's
  rows and several test runs can share one server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # the suite runs from a plain checkout too (no installed package)
    import master_server  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the tests are started
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from master_server.store import SQLStore, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    yield request.getfixturevalue("pg_schema_url")


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    """A migrated store on a fresh database, closed after the test."""
    s = open_store(store_url)
    assert isinstance(s, SQLStore)
    try:
        yield s
    finally:
        s.close()
