"""Store migrations run as whole scripts, each in one transaction, on a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest

from narset.store import Store, store
from narset.store.migrations import MIGRATIONS

TRIGGER = """
CREATE TABLE audit_probe (note TEXT NOT NULL);
CREATE TRIGGER audit_probe_stamp AFTER INSERT ON jobs
BEGIN
    INSERT INTO audit_probe (note) VALUES ('job; attached');
END;
"""


def _schema_version(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_a_migration_with_a_trigger_body_runs_whole(tmp_path, monkeypatch):
    """A migration whose trigger body and string hold `;` applies as written (no split on `;`)."""
    monkeypatch.setattr(store, "MIGRATIONS", (*MIGRATIONS, TRIGGER))
    path = tmp_path / "narset.db"
    Store.open(path).close()
    assert _schema_version(path) == len(MIGRATIONS) + 1
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO jobs (job_id, state, session_id, body) VALUES ('j', 1, 's', x'')")
        assert db.execute("SELECT note FROM audit_probe").fetchall() == [("job; attached",)]


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    """A migration that fails half-way leaves neither its first table nor a new schema version behind."""
    path = tmp_path / "narset.db"
    Store.open(path).close()
    broken = "CREATE TABLE half_done (x INTEGER);\nCREATE TABLE jobs (x INTEGER);"
    monkeypatch.setattr(store, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        Store.open(path)
    assert _schema_version(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables
