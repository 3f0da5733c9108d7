"""Narset's durable store and its schema migrations: SQLite (WAL) by default, PostgreSQL for replicas."""

from __future__ import annotations

from pathlib import Path

from narset.store.store import LOCK_TIMEOUT_S, Store, StoreUnavailable

__all__ = [
    "LOCK_TIMEOUT_S",
    "POSTGRES_SCHEMES",
    "DriverMissing",
    "Store",
    "StoreUnavailable",
    "is_postgres_url",
    "open_store",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class DriverMissing(RuntimeError):
    """A postgresql:// store was asked for, and psycopg is not installed."""


def is_postgres_url(location: str | Path) -> bool:
    """Whether `location` names a PostgreSQL database (else it is an SQLite file)."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def open_store(location: str | Path, synchronous: str = "normal", lock_timeout_s: float = LOCK_TIMEOUT_S) -> Store:
    """Open and migrate the store at `location`: a `postgresql://` URL, or an SQLite file (`synchronous`
    applies to SQLite only, `lock_timeout_s` to PostgreSQL only). psycopg is imported here, for a URL,
    and nowhere else."""
    if is_postgres_url(location):
        try:
            from narset.store.postgres import PostgresStore
        except ImportError as missing:
            if missing.name is None or not missing.name.startswith("psycopg"):
                raise
            raise DriverMissing(
                "a postgresql:// store needs psycopg 3: pip install 'narset-kasmina[postgres]'"
            ) from missing
        return PostgresStore.open(str(location), lock_timeout_s)
    return Store.open(location, synchronous)
