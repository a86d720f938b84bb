"""Compiled selects kept per statement shape (master_server.store.prepared), on a real SQLite
database: each statement keeps its own bound values, and values rendered into the SQL are never
shared."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, create_engine, select

from master_server.store import prepared
from master_server.store.prepared import Prepared, fetch_rows

META = MetaData()
ITEMS = Table("items", META, Column("id", Integer, primary_key=True), Column("name", String))


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(ITEMS.insert(), [{"id": i, "name": f"n{i}"} for i in range(1, 11)])
    return engine


def test_same_shape_keeps_each_statements_values(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with engine.connect() as conn:
        before = len(prepared._cache)
        got = [
            fetch_rows(
                conn, select(ITEMS.c.id).where(ITEMS.c.id > lo).order_by(ITEMS.c.id).limit(2)
            )
            for lo in (0, 4, 8, 9)
        ]
        assert got == [[(1,), (2,)], [(5,), (6,)], [(9,), (10,)], [(10,)]]
        assert len(prepared._cache) == before + 1  # one shape, compiled once


def test_named_binds_given_per_call(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    stmt = select(ITEMS.c.name).where(ITEMS.c.id == bindparam("id"))
    with engine.connect() as conn:
        p = Prepared(conn, stmt)
        assert p.rows(conn, id=3) == [("n3",)]
        assert p.rows(conn, id=7) == [("n7",)]


def test_in_lists_are_not_shared(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with engine.connect() as conn:
        before = len(prepared._cache)
        a = fetch_rows(conn, select(ITEMS.c.id).where(ITEMS.c.id.in_([1, 2])).order_by(ITEMS.c.id))
        b = fetch_rows(
            conn, select(ITEMS.c.id).where(ITEMS.c.id.in_([3, 4, 5])).order_by(ITEMS.c.id)
        )
        assert a == [(1,), (2,)]
        assert b == [(3,), (4,), (5,)]
        assert len(prepared._cache) == before  # rendered per statement, never cached


def test_cache_is_bounded(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with engine.connect() as conn:
        for k in range(prepared.CACHE_SIZE + 10):
            # A distinct shape each time: a different label.
            fetch_rows(conn, select(ITEMS.c.id.label(f"c{k}")).where(ITEMS.c.id == 1))
        assert len(prepared._cache) <= prepared.CACHE_SIZE


def test_driver_statement_runs_and_raises_sqlalchemys_errors(tmp_path: Path) -> None:
    import pytest
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from master_server.store.prepared import DriverStatement

    engine = _engine(tmp_path)
    add = DriverStatement(insert(ITEMS).values(id=bindparam("i"), name=bindparam("n")))
    one = DriverStatement(select(ITEMS.c.name).where(ITEMS.c.id == bindparam("i")))
    with engine.begin() as conn:
        add.run_many(conn, [{"i": 20, "n": "a"}, {"i": 21, "n": "b"}])
        assert one.rows(conn, {"i": 21}) == [("b",)]
        assert one.rows(conn, {"i": 99}) == []
        with pytest.raises(IntegrityError, match="UNIQUE"):
            add.run_many(conn, [{"i": 1, "n": "dup"}])  # the primary key refuses it
    with engine.connect() as conn:  # the error did not leave the connection unusable
        assert one.rows(conn, {"i": 20}) == [("a",)]
