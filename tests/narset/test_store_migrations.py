"""Store migrations run as whole scripts, each in one transaction, on a real SQLite file and on a real
PostgreSQL database."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from narset.store import Store, open_store, store
from narset.store.migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from narset.v1 import job_pb2

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


# PostgreSQL: the same versioning, in table narset_schema ------------------------------------------

FUNCTION = """
CREATE TABLE audit_probe (note TEXT NOT NULL);
CREATE FUNCTION audit_probe_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_probe (note) VALUES ('job; attached');
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_probe_stamp AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION audit_probe_stamp();
"""


@pytest.fixture
def postgres_store(postgres):
    """The PostgreSQL store's module (importable where a server could start: psycopg is there)."""
    import narset.store.postgres

    return narset.store.postgres


def _pg_version(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute("SELECT version FROM narset_schema").fetchone()[0]


def _pg_columns(url: str) -> dict[str, set[str]]:
    import psycopg

    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        ).fetchall()
    tables: dict[str, set[str]] = {}
    for table, column in rows:
        tables.setdefault(table, set()).add(column)
    return tables


def test_postgres_schema_has_sqlites_tables_and_columns(tmp_path, pg_url):
    """Both backends describe one schema: the same tables and columns (PostgreSQL's explicit `rowid` is
    SQLite's implicit one), so a migration appended to one list and not the other shows here."""
    Store.open(tmp_path / "narset.db").close()
    with sqlite3.connect(tmp_path / "narset.db") as db:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        sqlite_tables = {
            n: {row[1] for row in db.execute(f"PRAGMA table_info({n})")} for n in names if not n.startswith("sqlite_")
        }
    open_store(pg_url).close()
    postgres_tables = _pg_columns(pg_url)
    assert postgres_tables.pop("narset_schema") == {"version"}
    for table in ("scaffolds", "decisions"):
        postgres_tables[table].discard("rowid")
    assert postgres_tables == sqlite_tables
    assert _pg_version(pg_url) == len(POSTGRES_MIGRATIONS)


def test_postgres_migration_with_a_function_body_runs_whole(pg_url, postgres_store, monkeypatch):
    """A migration whose `$$` function body and string hold `;` applies as written."""
    monkeypatch.setattr(postgres_store, "POSTGRES_MIGRATIONS", (*POSTGRES_MIGRATIONS, FUNCTION))
    store = open_store(pg_url)
    try:
        assert _pg_version(pg_url) == len(POSTGRES_MIGRATIONS) + 1
        with store.transaction(job="j"):
            store.put_job(job_pb2.Job(job_id="j"))
        assert store._execute("SELECT note FROM audit_probe").fetchall() == [("job; attached",)]
    finally:
        store.close()


def test_postgres_failing_migration_changes_nothing(pg_url, postgres_store, monkeypatch):
    open_store(pg_url).close()
    broken = "CREATE TABLE half_done (x INTEGER);\nCREATE TABLE jobs (x INTEGER);"
    monkeypatch.setattr(postgres_store, "POSTGRES_MIGRATIONS", (*POSTGRES_MIGRATIONS, broken))
    import psycopg

    with pytest.raises(psycopg.errors.DuplicateTable):
        open_store(pg_url)
    assert _pg_version(pg_url) == len(POSTGRES_MIGRATIONS)
    assert "half_done" not in _pg_columns(pg_url)


def test_postgres_newer_schema_is_refused(pg_url, postgres_store, monkeypatch):
    monkeypatch.setattr(postgres_store, "POSTGRES_MIGRATIONS", (*POSTGRES_MIGRATIONS, "SELECT 1;"))
    open_store(pg_url).close()
    monkeypatch.setattr(postgres_store, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS)
    with pytest.raises(RuntimeError, match="newer than this Narset"):
        open_store(pg_url)


def test_postgres_replicas_starting_together_migrate_once(pg_url, postgres_store, monkeypatch):
    """Four stores opened at once on a new database: one applies each migration, the others wait and find
    it done (no duplicate-table error, one version)."""
    slow = "SELECT pg_sleep(0.3);\nCREATE TABLE slow_probe (x INTEGER);"
    monkeypatch.setattr(postgres_store, "POSTGRES_MIGRATIONS", (*POSTGRES_MIGRATIONS, slow))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_store(pg_url).close()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _pg_version(pg_url) == len(POSTGRES_MIGRATIONS) + 1
