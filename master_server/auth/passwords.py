"""Password hashing with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile)."""

from __future__ import annotations

import argon2

_HASHER = argon2.PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong
# password (no user enumeration by timing).
_DUMMY = _HASHER.hash("no such user")

MAX_PASSWORD_CHARS = 1024


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (None: compare against a dummy, False)."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        ok = _HASHER.verify(password_hash or _DUMMY, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
    return bool(ok) and password_hash is not None
