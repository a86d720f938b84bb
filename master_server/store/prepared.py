"""Statements run on the driver's cursor, compiled once per statement shape.

A page of a list or of a metrics stream is read as the driver's plain tuples: for thousands of
rows SQLAlchemy's ``Row`` objects cost more than the query. Compiling the statement for the
driver costs about a millisecond for a wide select, more than the query itself for a page of
100 experiments, so the compiled form is kept per statement *shape* (SQLAlchemy's cache key,
which leaves out the bound values) and each call binds its own values to it, as SQLAlchemy's
own statement cache does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

#: Compiled shapes kept (least recently used dropped first).
CACHE_SIZE = 256


class _Compiled:
    """A shape compiled for one dialect: its SQL and how to order its binds."""

    __slots__ = ("compiled", "order", "sql")

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.sql = str(compiled)
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None


_cache: OrderedDict[tuple[Any, ...], _Compiled] = OrderedDict()
_lock = threading.Lock()


class Prepared:
    """A statement compiled for the driver, run with new values of its named binds.

    Args:
        conn: a connection of the dialect to compile for.
        stmt: the statement; its bound values are this statement's, its compiled form is
            shared with every statement of the same shape.
    """

    __slots__ = ("order", "params", "sql")

    def __init__(self, conn: Connection, stmt: ClauseElement) -> None:
        ck = stmt._generate_cache_key()
        d = conn.dialect
        shape = None if ck is None else (d.name, d.paramstyle, d.server_version_info, ck.key)
        hit = None
        if shape is not None:
            with _lock:
                hit = _cache.get(shape)
                if hit is not None:
                    _cache.move_to_end(shape)
        if hit is None:
            compiled: Any = stmt.compile(dialect=conn.dialect, cache_key=ck)
            if compiled.post_compile_params or compiled.literal_execute_params:
                # Values rendered into the SQL (expanding IN lists): this statement's own.
                self._set(stmt.compile(dialect=conn.dialect, compile_kwargs=_POSTCOMPILE))
                return
            hit = _Compiled(compiled)
            if shape is not None:
                with _lock:
                    _cache[shape] = hit
                    if len(_cache) > CACHE_SIZE:
                        _cache.popitem(last=False)
        params = (
            # (``_check=False``: binds without a value are given to :meth:`rows`.)
            hit.compiled.construct_params(extracted_parameters=ck.bindparams, _check=False)
            if ck is not None
            else hit.compiled.construct_params(_check=False)
        )
        self.sql = hit.sql
        self.params = dict(params)
        self.order = hit.order

    def _set(self, compiled: Any) -> None:
        self.sql = str(compiled)
        self.params = dict(compiled.params)
        self.order = tuple(compiled.positiontup or ()) if compiled.positional else None

    def rows(self, conn: Connection, **binds: Any) -> list[tuple[Any, ...]]:
        """The rows for these values of the named binds (the others as the statement's)."""
        params = {**self.params, **binds} if binds else self.params
        args: Any = params if self.order is None else tuple(params[k] for k in self.order)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, args)
            return list(cursor.fetchall())
        finally:
            cursor.close()


_POSTCOMPILE = {"render_postcompile": True}


def fetch_rows(conn: Connection, stmt: ClauseElement) -> list[tuple[Any, ...]]:
    """The statement's rows as the driver's plain tuples."""
    return Prepared(conn, stmt).rows(conn)


class DriverStatement:
    """A statement of fixed shape (no IN lists) run on the driver's cursor, compiled once per
    dialect.

    For the few statements every metric report runs, SQLAlchemy's execution (an execution
    context and a result object per call, about 50 us) costs ten times SQLite's own work.
    Values are given as the driver takes them (no type processing); a driver error is raised
    as SQLAlchemy's, so callers and :func:`master_server.store.errors.database_unavailable`
    see what they would see from ``Connection.execute``.

    Args:
        stmt: the statement, with named ``bindparam``s.
    """

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._by_dialect: dict[tuple[str, str], _Compiled] = {}

    def _compiled(self, conn: Connection) -> _Compiled:
        d = conn.dialect
        key = (d.name, d.paramstyle)
        c = self._by_dialect.get(key)
        if c is None:
            c = self._by_dialect[key] = _Compiled(self.stmt.compile(dialect=d))
        return c

    def _args(self, c: _Compiled, params: Mapping[str, Any]) -> Any:
        return params if c.order is None else tuple(params[k] for k in c.order)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one execution."""
        c = self._compiled(conn)
        args = self._args(c, params)
        cursor = conn.connection.cursor()
        try:
            cursor.execute(c.sql, args)
            return list(cursor.fetchall())
        except conn.dialect.loaded_dbapi.Error as e:
            raise _wrapped(conn, c.sql, args, e) from e
        finally:
            cursor.close()

    def run_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """One execution per parameter set (the driver's ``executemany``)."""
        c = self._compiled(conn)
        args = [self._args(c, p) for p in params]
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(c.sql, args)
        except conn.dialect.loaded_dbapi.Error as e:
            raise _wrapped(conn, c.sql, args, e) from e
        finally:
            cursor.close()


def _wrapped(conn: Connection, sql: str, args: Any, e: Exception) -> Exception:
    """``e`` as SQLAlchemy raises it (IntegrityError, OperationalError, ...); a connection the
    database dropped is invalidated, so the pool does not hand it out again."""
    dbapi_conn = conn.connection.dbapi_connection
    lost = bool(conn.dialect.is_disconnect(cast(Any, e), dbapi_conn, None))
    if lost:
        conn.invalidate(e)
    return DBAPIError.instance(
        sql,
        args,
        e,
        conn.dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=conn.dialect,
    )
