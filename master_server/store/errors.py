"""What a database failure means to a caller of the master.

A database that refuses work for a while (locked past the busy timeout, disk full, connection
to PostgreSQL lost) is not a bug of the request: it is answered UNAVAILABLE, which clients
retry, naming the database's own reason, rather than INTERNAL. Nothing was written: every
store call and every engine event is one transaction, rolled back on such an error.
"""

from __future__ import annotations

from sqlalchemy.exc import DisconnectionError, OperationalError

from determined_sdk.errors import MasterUnavailableError


def database_unavailable(e: BaseException) -> MasterUnavailableError | None:
    """The error to answer for ``e`` when it is the database refusing work, else None."""
    if isinstance(e, OperationalError | DisconnectionError):
        reason = getattr(e, "orig", None) or e
        return MasterUnavailableError(
            f"the master's database is unavailable, nothing was changed; retry: {reason}"
        )
    return None
