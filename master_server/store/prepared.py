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
from typing import Any

from sqlalchemy import Connection
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
