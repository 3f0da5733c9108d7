"""Narset's durable store (SQLite, WAL) and its schema migrations."""

from narset.store.store import Store

__all__ = ["Store"]
