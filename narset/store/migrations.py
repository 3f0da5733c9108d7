"""Schema migrations of the Narset store, applied in order inside one transaction each.

Two lists, one per backend: `MIGRATIONS` for SQLite (`PRAGMA user_version` records how many have
run) and `POSTGRES_MIGRATIONS` for PostgreSQL (the one row of table `narset_schema` records it).
PostgreSQL's list starts at the schema SQLite had reached when PostgreSQL came (its version 3), and
both describe the same tables and columns (tests/narset/test_store_migrations.py compares them). To
change the schema, append an entry to each list; never edit an applied one.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "POSTGRES_MIGRATIONS"]

# Complex sub-objects are stored as serialized protobuf (`body`), with the columns that queries
# filter or order on kept alongside.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        state INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        last_boundary INTEGER NOT NULL DEFAULT 0,
        body BLOB NOT NULL
    );
    CREATE TABLE modules (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, name)
    );
    CREATE TABLE blueprints (
        name TEXT PRIMARY KEY,
        body BLOB NOT NULL
    );
    CREATE TABLE commands (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        state INTEGER NOT NULL,
        action TEXT NOT NULL,
        scaffold_id TEXT NOT NULL DEFAULT '',
        body BLOB NOT NULL
    );
    CREATE INDEX commands_by_job_state ON commands (job_id, state, seq);
    CREATE TABLE scaffolds (
        scaffold_id TEXT NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        module TEXT NOT NULL,
        region TEXT NOT NULL,
        stage INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, scaffold_id)
    );
    CREATE TABLE scaffold_history (
        job_id TEXT NOT NULL,
        scaffold_id TEXT NOT NULL,
        boundary INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, scaffold_id, boundary)
    );
    CREATE TABLE reports (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        boundary INTEGER NOT NULL,
        received_at REAL NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, boundary)
    );
    CREATE TABLE decisions (
        decision_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        boundary INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX decisions_by_job ON decisions (job_id, boundary);
    CREATE TABLE policies (
        job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
        body BLOB NOT NULL
    );
    CREATE TABLE embargoes (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        region TEXT NOT NULL,
        until_boundary INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        PRIMARY KEY (job_id, region)
    );
    CREATE TABLE events (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX events_by_job ON events (job_id, sequence);
    """,
    # 2: command and decision ids are scoped per job: the same id in two jobs names two commands, so
    # no job can reach or pre-empt another's. Rebuilt with their rows, ledger order (seq) and rowids.
    """
    CREATE TABLE commands_scoped (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        command_id TEXT NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        state INTEGER NOT NULL,
        action TEXT NOT NULL,
        scaffold_id TEXT NOT NULL DEFAULT '',
        body BLOB NOT NULL,
        UNIQUE (job_id, command_id)
    );
    INSERT INTO commands_scoped (seq, command_id, job_id, state, action, scaffold_id, body)
        SELECT seq, command_id, job_id, state, action, scaffold_id, body FROM commands;
    DROP TABLE commands;
    ALTER TABLE commands_scoped RENAME TO commands;
    CREATE INDEX commands_by_job_state ON commands (job_id, state, seq);
    CREATE TABLE decisions_scoped (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        decision_id TEXT NOT NULL,
        boundary INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, decision_id)
    );
    INSERT INTO decisions_scoped (rowid, job_id, decision_id, boundary, body)
        SELECT rowid, job_id, decision_id, boundary, body FROM decisions;
    DROP TABLE decisions;
    ALTER TABLE decisions_scoped RENAME TO decisions;
    CREATE INDEX decisions_by_job ON decisions (job_id, boundary);
    """,
    # 3: identity. jobs.session_id holds the SHA-256 of the session's worker credential, never the
    # credential: the plain ids stored so far are cleared (their workers attach again). The audit log
    # is append-only: triggers refuse every UPDATE and DELETE, whoever issues them.
    """
    UPDATE jobs SET session_id = '';
    CREATE INDEX jobs_by_session ON jobs (session_id);
    CREATE TABLE audit (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ns INTEGER NOT NULL,
        principal TEXT NOT NULL,
        role TEXT NOT NULL,
        peer TEXT NOT NULL,
        method TEXT NOT NULL,
        job_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_job ON audit (job_id, sequence);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only');
    END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only');
    END;
    """,
)

# PostgreSQL: the tables of SQLite's version 3, with PostgreSQL's types. Where SQLite's queries order
# by insertion (`ORDER BY rowid`), the table has an explicit identity column named `rowid`, so the
# repository's SQL is the same on both.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        state INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        last_boundary BIGINT NOT NULL DEFAULT 0,
        body BYTEA NOT NULL
    );
    CREATE INDEX jobs_by_session ON jobs (session_id);
    CREATE TABLE modules (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (job_id, name)
    );
    CREATE TABLE blueprints (
        name TEXT PRIMARY KEY,
        body BYTEA NOT NULL
    );
    CREATE TABLE commands (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        command_id TEXT NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        state INTEGER NOT NULL,
        action TEXT NOT NULL,
        scaffold_id TEXT NOT NULL DEFAULT '',
        body BYTEA NOT NULL,
        UNIQUE (job_id, command_id)
    );
    CREATE INDEX commands_by_job_state ON commands (job_id, state, seq);
    CREATE TABLE scaffolds (
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
        scaffold_id TEXT NOT NULL,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        module TEXT NOT NULL,
        region TEXT NOT NULL,
        stage INTEGER NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (job_id, scaffold_id)
    );
    CREATE TABLE scaffold_history (
        job_id TEXT NOT NULL,
        scaffold_id TEXT NOT NULL,
        boundary BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (job_id, scaffold_id, boundary)
    );
    CREATE TABLE reports (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        boundary BIGINT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (job_id, boundary)
    );
    CREATE TABLE decisions (
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        decision_id TEXT NOT NULL,
        boundary BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (job_id, decision_id)
    );
    CREATE INDEX decisions_by_job ON decisions (job_id, boundary);
    CREATE TABLE policies (
        job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
        body BYTEA NOT NULL
    );
    CREATE TABLE embargoes (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        region TEXT NOT NULL,
        until_boundary BIGINT NOT NULL,
        failures INTEGER NOT NULL,
        PRIMARY KEY (job_id, region)
    );
    CREATE TABLE events (
        sequence BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE INDEX events_by_job ON events (job_id, sequence);
    CREATE TABLE audit (
        sequence BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at_ns BIGINT NOT NULL,
        principal TEXT NOT NULL,
        role TEXT NOT NULL,
        peer TEXT NOT NULL,
        method TEXT NOT NULL,
        job_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_job ON audit (job_id, sequence);
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit log is append-only';
    END;
    $$;
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
    """,
)
