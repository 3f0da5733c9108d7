"""Secrets Narset hands out or accepts (session credentials, bearer tokens), and the digests it keeps of them.

Narset stores and compares SHA-256 digests only, so its database and configuration never hold a
secret that would let a reader act as a job or an operator.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["digest", "new_credential", "same_digest"]


def new_credential() -> str:
    """A fresh secret of 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The hex SHA-256 of `secret`, what Narset keeps instead of it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(secret: str, expected: str | None) -> bool:
    """Whether `secret` hashes to `expected`, in time that does not depend on where they differ."""
    return bool(expected) and hmac.compare_digest(digest(secret), expected)
