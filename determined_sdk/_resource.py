"""What every SDK resource shares: its session, its cached message, lazy hydration, ``reload()``.

A resource is built from an id and a session. Built directly it is *blank*: no request is sent
until a cached attribute is read, which fetches the resource once ("lazy hydrate"); helper
methods that only need the id (``kill()``, ``logs()``, ...) never fetch. Built by the SDK from a
response (``client.get_trial``, ``experiment.list_trials``) it is hydrated from that message.
Cached attributes then keep their value until :meth:`reload` is called, except for the ones a
setter of this object changes (``set_name`` updates ``name``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import Any, Generic, Protocol, Self, TypeVar

from google.protobuf import message as _message

from determined_sdk import _default, errors
from determined_sdk._session import Session

M = TypeVar("M", bound=_message.Message)


class _HasSession(Protocol):
    @property
    def session(self) -> Session: ...


SessionLike = Session | _HasSession
"""A :class:`Session`, or anything with a ``session`` attribute (a ``Determined`` client)."""


def resolve_session(session: SessionLike | None) -> Session:
    """The session to use: the given one, the given client's, or the default client's."""
    if session is None:
        return _default.get().session
    if isinstance(session, Session):
        return session
    return session.session


class Resource(Generic[M]):
    """Base of the resource classes: a session, a cached message, lazy hydration."""

    _msg: M | None

    def __init__(self, session: SessionLike | None) -> None:
        self._session = resolve_session(session)
        self._msg = None
        self._parsed: dict[str, Any] = {}

    @classmethod
    def _adopt(cls, msg: M | None, session: Session) -> Self:
        """An object holding ``msg``, built without ``__init__`` and its checks (a list
        builds thousands; the master's ids are valid): the caller sets the id attributes."""
        obj = cls.__new__(cls)
        obj._session = session
        obj._msg = msg
        obj._parsed = {}
        return obj

    def _fetch(self) -> M:
        raise NotImplementedError

    def _set(self, msg: M) -> None:
        """Replace the cache with ``msg`` (JSON fields are parsed again when next read)."""
        self._msg = msg
        self._parsed = {}

    def _json(self, field: str) -> Any:
        """A JSON string field of the cached message, parsed once on first read (lists of
        thousands of objects then cost no parsing for fields nobody reads)."""
        parsed = self._parsed
        if field not in parsed:
            parsed[field] = loads(getattr(self._m(), field))
        return parsed[field]

    def _m(self) -> M:
        """The cached message, fetched once if this object is blank."""
        msg = self._msg
        if msg is None:
            self.reload()
            msg = self._msg
            assert msg is not None
        return msg

    @property
    def session(self) -> Session:
        """The session this object talks to the master through."""
        return self._session

    @property
    def hydrated(self) -> bool:
        """True once this object holds the master's data (fetched or given at creation)."""
        return self._msg is not None

    def reload(self) -> None:
        """Fetch this resource again and replace every cached attribute with the fresh value.

        Raises:
            NotFoundError: The resource no longer exists.
        """
        self._set(self._fetch())


def loads(text: str, default: Any = None) -> Any:
    """Parse a JSON field of a message; an empty string gives ``default`` (a new ``{}`` if None)."""
    if not text:
        return {} if default is None else default
    return json.loads(text)


def dumps(value: Any, what: str) -> str:
    """JSON text of ``value`` for a request; InvalidArgumentError naming ``what`` if it can't be."""
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise errors.InvalidArgumentError(f"{what}: not JSON-serializable: {e}") from None


def deprecated(old: str, new: str) -> None:
    """Emit the DeprecationWarning for a renamed or replaced call, pointing at the caller."""
    warnings.warn(
        f"{old} is deprecated and will be removed; use {new} instead.",
        DeprecationWarning,
        stacklevel=3,
    )


def check_id(value: Any, what: str) -> int:
    """``value`` as a positive int id, else InvalidArgumentError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.InvalidArgumentError(f"{what}: must be a positive integer, got {value!r}")
    return value


def check_limit(value: int | None, what: str) -> int:
    """The wire form (0 = no limit) of an optional non-negative count."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.InvalidArgumentError(f"{what}: must be a non-negative integer, got {value!r}")
    return value


def str_list(values: Iterable[str] | str | None, what: str) -> list[str]:
    """A list of strings from an iterable of them (a lone str is one item)."""
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    out = list(values)
    for v in out:
        if not isinstance(v, str):
            raise errors.InvalidArgumentError(f"{what}: expected strings, got {v!r}")
    return out
