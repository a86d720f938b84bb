"""Shared fixtures: a real master on loopback (port 0) with a real SQLite file."""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from master_server.app import Master
from tests.s3_server import MotoServer
from tests.support import Stubs

PG_URL = os.environ.get("DETSDK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True, scope="session")
def _private_token_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or write the developer's ~/.detsdk/auth.json."""
    old = os.environ.get("DETSDK_AUTH_FILE")
    os.environ["DETSDK_AUTH_FILE"] = str(tmp_path_factory.mktemp("auth") / "auth.json")
    yield
    if old is None:
        os.environ.pop("DETSDK_AUTH_FILE", None)
    else:
        os.environ["DETSDK_AUTH_FILE"] = old


@pytest.fixture
def master_factory(tmp_path: pathlib.Path) -> Iterator[Callable[..., Master]]:
    """Start masters (stopped at teardown); kwargs go to :class:`Master`."""
    started: list[Master] = []

    def make(**kw: Any) -> Master:
        kw.setdefault("slots", 2)
        kw.setdefault("preempt_grace_s", 10.0)
        data_dir = kw.pop("data_dir", tmp_path / "master")
        m = Master(data_dir, **kw).start()
        started.append(m)
        return m

    yield make
    for m in started:
        m.stop()


@pytest.fixture
def master(master_factory: Callable[..., Master]) -> Master:
    """A started master on 127.0.0.1:<free port>, SQLite in tmp_path, 2 slots."""
    return master_factory()


@pytest.fixture
def stubs(master: Master) -> Iterator[Stubs]:
    s = Stubs.connect(master.address)
    yield s
    s.channel.close()


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


@pytest.fixture
def pg_schema_url(pg_admin: Any) -> Iterator[str]:
    """A URL of a fresh PostgreSQL schema (dropped after the test); skips without PostgreSQL."""
    schema = f"detsdk_test_{uuid.uuid4().hex[:16]}"
    pg_admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        pg_admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, stopped after the run;
    dummy credentials are set in the environment (children inherit them)."""
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A new, empty bucket on :func:`s3_server`."""
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(name)
    return name
