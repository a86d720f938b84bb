"""The master's persistent store: the :class:`Store` contract and its SQL implementation.

Use :func:`open_store` to get a ready (migrated) store for a database URL::

    store = open_store("sqlite:////var/lib/determined/master.db")
    store = open_store("postgresql+psycopg://postgres@127.0.0.1:5432/determined")
"""

from __future__ import annotations

from master_server.store.base import Store
from master_server.store.sql import SQLStore

__all__ = ["SQLStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """Open the database at ``url``, apply pending migrations and return the store.

    Args:
        url: ``sqlite:////abs/path.db`` or ``postgresql+psycopg://user@host:port/db``.

    Returns:
        A :class:`SQLStore` whose schema is at the newest revision, with the default
        workspace and project present.
    """
    store = SQLStore(url)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store
