"""The durable store of Narset: SQLite in WAL mode behind a small repository API.

Every write happens inside `transaction()`, committed to the write-ahead log before the RPC that
caused it answers, so nothing acknowledged is lost on `kill -9`. One connection, used from the
server's event-loop thread only.

The repository's SQL is written once, in the dialect SQLite and PostgreSQL share (`?` placeholders,
`INSERT ... ON CONFLICT ... DO UPDATE`, insertion order as `rowid`); `narset.store.postgres` runs the
same methods on PostgreSQL and adds what several processes on one database need (job locks).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import structlog
from google.protobuf.message import Message

from narset.contract.stages import LIVE_STAGES, OCCUPYING_STAGES
from narset.store.migrations import MIGRATIONS
from narset.v1 import command_pb2, job_pb2, operator_service_pb2, telemetry_pb2

__all__ = ["LOCK_TIMEOUT_S", "Store", "StoreUnavailable"]

log = structlog.get_logger("narset.store")

M = TypeVar("M", bound=Message)
S = TypeVar("S", bound="Store")


# The longest a statement waits for a lock before its call fails with StoreUnavailable (PostgreSQL's
# lock_timeout): a job's lock is held for one short transaction, and a replica waits on its event loop,
# health checks included, so a wait this long means a stuck holder, not a busy one.
LOCK_TIMEOUT_S = 2.0


class StoreUnavailable(RuntimeError):
    """The store could not complete a call for a reason that passes: a lock wait past the lock timeout, a
    deadlock, a lost connection, a server shutting down or failing over. The call's transaction was
    rolled back, nothing changed, and the same call may be made again (here, or on another replica)."""


def _in(values: Iterable[int]) -> str:
    return "(" + ",".join(str(int(v)) for v in values) + ")"


class Store:
    """Repository over one SQLite file; all methods are synchronous and short.

    The base of `PostgresStore` too: its methods reach the database only through `_execute`,
    `_executemany` and `_insert_id`, and `transaction` and `_migrate`, which a dialect overrides.
    """

    # Whether other processes write the same database (replicas on PostgreSQL): then a change can
    # come from elsewhere at any time, and whoever waits for one must also look for it (`EventHub`).
    shared = False
    # What makes an ORDER BY on text compare bytes, as SQLite's default BINARY collation and Python's
    # `<` on str (code points, in UTF-8's byte order) do: a dialect whose default order differs says so.
    _BYTE_ORDER = ""

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._db = connection
        self.path = path
        # Called with the seconds each COMMIT took (the server's metrics set it; the store stays plain).
        self.on_commit: Callable[[float], None] | None = None

    @classmethod
    def open(cls, path: str | Path, synchronous: str = "normal") -> Store:
        """Open (creating if needed) and migrate the database at `path`.

        In WAL mode `synchronous=normal` loses nothing committed when the process dies (kill -9);
        `full` also survives an OS crash or power loss, at an fsync per commit.
        """
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        return cls(db, path)._migrated()

    def _migrated(self: S) -> S:
        """This store once its schema is migrated; closed if the migration fails."""
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the connection, checkpointing the WAL into the main file; safe twice."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database {self.path} has schema version {version}, newer than this Narset "
                f"({len(MIGRATIONS)}); upgrade Narset"
            )
        for index in range(version, len(MIGRATIONS)):
            # The whole script in one transaction: SQLite parses it (a `;` inside a trigger body or a
            # string is not a statement end), and a failure leaves the schema as it was.
            script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[index]}\nPRAGMA user_version={index + 1};\nCOMMIT;"
            try:
                self._db.executescript(script)
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            log.info("store.migrated", path=self.path, schema_version=index + 1)

    @property
    def shown(self) -> str:
        """Where the store is, for logs: the file (a PostgreSQL URL without its password)."""
        return self.path

    @contextmanager
    def transaction(self, job: str | None = None) -> Iterator[None]:
        """All-or-nothing group of writes; nested use joins the outer transaction.

        `job`: the transaction reads and writes that job, and no other transaction on it may
        interleave. SQLite's `BEGIN IMMEDIATE` already takes the database's one write lock, so every
        transaction is alone; a shared store (PostgreSQL) takes the job's lock here. Open it before
        the job's first read.
        """
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        started = time.perf_counter()
        self._db.execute("COMMIT")
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)

    # The three ways the repository reaches the database (a dialect overrides them).

    def _execute(self, query: str, params: tuple = ()):
        """Run one statement; the cursor (fetchone, fetchall)."""
        return self._db.execute(query, params)

    def _executemany(self, query: str, rows: list[tuple]) -> None:
        self._db.executemany(query, rows)

    def _insert_id(self, query: str, params: tuple, column: str) -> int:
        """Run an INSERT; the value of the row's generated key `column`."""
        return self._db.execute(query, params).lastrowid

    def _one(self, message: type[M], query: str, params: tuple = ()) -> M | None:
        """The message in the `body` column of the query's first row, if any."""
        row = self._execute(query, params).fetchone()
        return message.FromString(row[0]) if row else None

    def _all(self, message: type[M], query: str, params: tuple = ()) -> list[M]:
        """The messages in the `body` column of every row of the query, in its order."""
        return [message.FromString(row[0]) for row in self._execute(query, params).fetchall()]

    # jobs ---------------------------------------------------------------------------------------

    # A job's session credential lives only as a digest in its own column (`set_session`): bodies never
    # hold it, and those written before schema 3 have it cleared as they are read.

    def get_job(self, job_id: str) -> job_pb2.Job | None:
        job = self._one(job_pb2.Job, "SELECT body FROM jobs WHERE job_id = ?", (job_id,))
        if job is not None:
            job.ClearField("session_id")
        return job

    def list_jobs(self) -> list[job_pb2.Job]:
        """Every job, by job id in byte order (the order ListJobs compares its page tokens in)."""
        jobs = self._all(job_pb2.Job, f"SELECT body FROM jobs ORDER BY job_id{self._BYTE_ORDER}")
        for job in jobs:
            job.ClearField("session_id")
        return jobs

    def put_job(self, job: job_pb2.Job) -> None:
        body = job_pb2.Job()
        body.CopyFrom(job)
        body.ClearField("session_id")
        self._execute(
            "INSERT INTO jobs (job_id, state, session_id, last_boundary, body) VALUES (?, ?, '', ?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET state = excluded.state, "
            "last_boundary = excluded.last_boundary, body = excluded.body",
            (job.job_id, job.state, job.last_boundary, body.SerializeToString()),
        )

    def set_session(self, job_id: str, digest: str) -> None:
        """Make `digest` (the SHA-256 of a worker credential) the job's current session."""
        self._execute("UPDATE jobs SET session_id = ? WHERE job_id = ?", (digest, job_id))

    def session_digest(self, job_id: str) -> str | None:
        row = self._execute("SELECT session_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def job_of_session(self, digest: str) -> str | None:
        """The job whose current session has credential digest `digest`, if any."""
        row = self._execute("SELECT job_id FROM jobs WHERE session_id = ? AND session_id != ''", (digest,))
        found = row.fetchone()
        return found[0] if found else None

    def replace_modules(self, job_id: str, modules: Iterable[job_pb2.ModuleInfo]) -> None:
        self._execute("DELETE FROM modules WHERE job_id = ?", (job_id,))
        self._executemany(
            "INSERT INTO modules (job_id, name, position, body) VALUES (?, ?, ?, ?)",
            [(job_id, m.name, i, m.SerializeToString()) for i, m in enumerate(modules)],
        )

    def list_modules(self, job_id: str) -> list[job_pb2.ModuleInfo]:
        return self._all(job_pb2.ModuleInfo, "SELECT body FROM modules WHERE job_id = ? ORDER BY position", (job_id,))

    def get_module(self, job_id: str, name: str) -> job_pb2.ModuleInfo | None:
        return self._one(job_pb2.ModuleInfo, "SELECT body FROM modules WHERE job_id = ? AND name = ?", (job_id, name))

    # blueprints ---------------------------------------------------------------------------------

    def put_blueprint(self, blueprint: job_pb2.Blueprint) -> None:
        self._execute(
            "INSERT INTO blueprints (name, body) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET body = excluded.body",
            (blueprint.name, blueprint.SerializeToString()),
        )

    def get_blueprint(self, name: str) -> job_pb2.Blueprint | None:
        return self._one(job_pb2.Blueprint, "SELECT body FROM blueprints WHERE name = ?", (name,))

    def list_blueprints(self) -> list[job_pb2.Blueprint]:
        return self._all(job_pb2.Blueprint, "SELECT body FROM blueprints ORDER BY name")

    # commands -----------------------------------------------------------------------------------

    def get_command(self, job_id: str, command_id: str) -> command_pb2.CommandRecord | None:
        return self._one(
            command_pb2.CommandRecord,
            "SELECT body FROM commands WHERE job_id = ? AND command_id = ?",
            (job_id, command_id),
        )

    def put_command(self, record: command_pb2.CommandRecord) -> None:
        """Insert a new command at the end of the ledger, or update an existing one in place."""
        command = record.command
        self._execute(
            "INSERT INTO commands (command_id, job_id, state, action, scaffold_id, body) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(job_id, command_id) DO UPDATE SET state = excluded.state, scaffold_id = excluded.scaffold_id, "
            "body = excluded.body",
            (
                command.command_id,
                command.job_id,
                record.state,
                command.WhichOneof("action") or "",
                record.scaffold_id,
                record.SerializeToString(),
            ),
        )

    def list_commands(self, job_id: str, states: Iterable[int] = ()) -> list[command_pb2.CommandRecord]:
        """The job's commands in `states` (every state for none), in ledger order."""
        return [record for _, record in self.commands_after(job_id, 0, states)]

    def commands_after(
        self, job_id: str, sequence: int, states: Iterable[int] = ()
    ) -> list[tuple[int, command_pb2.CommandRecord]]:
        """(ledger sequence, record) of the job's commands in `states` (every state for none) after
        `sequence`, in ledger order. Sequences start at 1; a command keeps its sequence for good."""
        states = sorted(set(states))
        where = f" AND state IN {_in(states)}" if states else ""
        rows = self._execute(
            f"SELECT seq, body FROM commands WHERE job_id = ? AND seq > ?{where} ORDER BY seq", (job_id, sequence)
        )
        return [(seq, command_pb2.CommandRecord.FromString(body)) for seq, body in rows.fetchall()]

    # scaffolds ----------------------------------------------------------------------------------

    def put_scaffold(self, scaffold: job_pb2.Scaffold) -> None:
        stored = job_pb2.Scaffold()
        stored.CopyFrom(scaffold)
        del stored.history[:]
        self._execute(
            "INSERT INTO scaffolds (scaffold_id, job_id, module, region, stage, body) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(job_id, scaffold_id) DO UPDATE SET module = excluded.module, region = excluded.region, "
            "stage = excluded.stage, body = excluded.body",
            (
                scaffold.scaffold_id,
                scaffold.job_id,
                scaffold.module,
                scaffold.region,
                scaffold.stage,
                stored.SerializeToString(),
            ),
        )

    def delete_scaffold(self, job_id: str, scaffold_id: str) -> None:
        self._execute("DELETE FROM scaffold_history WHERE job_id = ? AND scaffold_id = ?", (job_id, scaffold_id))
        self._execute("DELETE FROM scaffolds WHERE job_id = ? AND scaffold_id = ?", (job_id, scaffold_id))

    def get_scaffold(self, job_id: str, scaffold_id: str) -> job_pb2.Scaffold | None:
        return self._one(
            job_pb2.Scaffold, "SELECT body FROM scaffolds WHERE job_id = ? AND scaffold_id = ?", (job_id, scaffold_id)
        )

    def list_scaffolds(self, job_id: str, stages: Iterable[int] = ()) -> list[job_pb2.Scaffold]:
        stages = list(stages)
        where = f" AND stage IN {_in(stages)}" if stages else ""
        return self._all(
            job_pb2.Scaffold, f"SELECT body FROM scaffolds WHERE job_id = ?{where} ORDER BY rowid", (job_id,)
        )

    def live_scaffolds(self, job_id: str) -> list[job_pb2.Scaffold]:
        return self.list_scaffolds(job_id, LIVE_STAGES)

    def count_live_scaffolds(self, job_id: str) -> int:
        query = f"SELECT COUNT(*) FROM scaffolds WHERE job_id = ? AND stage IN {_in(LIVE_STAGES)}"
        return self._execute(query, (job_id,)).fetchone()[0]

    def occupying_scaffold(self, job_id: str, module: str) -> job_pb2.Scaffold | None:
        """The scaffold (or permanent seed) holding `module` now, if any."""
        return self._one(
            job_pb2.Scaffold,
            f"SELECT body FROM scaffolds WHERE job_id = ? AND module = ? AND stage IN {_in(OCCUPYING_STAGES)}",
            (job_id, module),
        )

    def add_scaffold_history(self, job_id: str, scaffold_id: str, entry: job_pb2.ScaffoldBoundary) -> None:
        self._execute(
            "INSERT INTO scaffold_history (job_id, scaffold_id, boundary, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(job_id, scaffold_id, boundary) DO UPDATE SET body = excluded.body",
            (job_id, scaffold_id, entry.boundary, entry.SerializeToString()),
        )

    def scaffold_history(self, job_id: str, scaffold_id: str) -> list[job_pb2.ScaffoldBoundary]:
        return self._all(
            job_pb2.ScaffoldBoundary,
            "SELECT body FROM scaffold_history WHERE job_id = ? AND scaffold_id = ? ORDER BY boundary",
            (job_id, scaffold_id),
        )

    # reports ------------------------------------------------------------------------------------

    def put_report(self, job_id: str, boundary: int, received_at: float, body: bytes) -> None:
        self._execute(
            "INSERT INTO reports (job_id, boundary, received_at, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(job_id, boundary) DO UPDATE SET received_at = excluded.received_at, body = excluded.body",
            (job_id, boundary, received_at, body),
        )

    def report_bodies(self, job_id: str, first: int, last: int) -> list[tuple[int, bytes]]:
        """Stored reports of boundaries first..last (inclusive), oldest first."""
        rows = self._execute(
            "SELECT boundary, body FROM reports WHERE job_id = ? AND boundary BETWEEN ? AND ? ORDER BY boundary",
            (job_id, first, last),
        )
        return rows.fetchall()

    # decisions ----------------------------------------------------------------------------------

    def put_decision(self, decision: telemetry_pb2.Decision) -> None:
        self._execute(
            "INSERT INTO decisions (decision_id, job_id, boundary, body) VALUES (?, ?, ?, ?)",
            (decision.decision_id, decision.job_id, decision.boundary, decision.SerializeToString()),
        )

    def list_decisions(self, job_id: str) -> list[telemetry_pb2.Decision]:
        return self._all(
            telemetry_pb2.Decision, "SELECT body FROM decisions WHERE job_id = ? ORDER BY boundary, rowid", (job_id,)
        )

    # policies and embargoes ---------------------------------------------------------------------

    def get_policy(self, job_id: str) -> job_pb2.JobPolicy | None:
        return self._one(job_pb2.JobPolicy, "SELECT body FROM policies WHERE job_id = ?", (job_id,))

    def put_policy(self, job_id: str, policy: job_pb2.JobPolicy) -> None:
        self._execute(
            "INSERT INTO policies (job_id, body) VALUES (?, ?) ON CONFLICT(job_id) DO UPDATE SET body = excluded.body",
            (job_id, policy.SerializeToString()),
        )

    def list_embargoes(self, job_id: str) -> list[job_pb2.RegionEmbargo]:
        rows = self._execute(
            "SELECT region, until_boundary, failures FROM embargoes WHERE job_id = ? ORDER BY region", (job_id,)
        )
        return [job_pb2.RegionEmbargo(region=r, until_boundary=u, failures=f) for r, u, f in rows.fetchall()]

    def put_embargo(self, job_id: str, embargo: job_pb2.RegionEmbargo) -> None:
        self._execute(
            "INSERT INTO embargoes (job_id, region, until_boundary, failures) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(job_id, region) DO UPDATE SET until_boundary = excluded.until_boundary, "
            "failures = excluded.failures",
            (job_id, embargo.region, embargo.until_boundary, embargo.failures),
        )

    # events -------------------------------------------------------------------------------------

    def append_event(self, event: job_pb2.Event) -> job_pb2.Event:
        """Store `event` and return it with its sequence number."""
        sequence = self._insert_id(
            "INSERT INTO events (job_id, body) VALUES (?, ?)", (event.job_id, event.SerializeToString()), "sequence"
        )
        stored = job_pb2.Event()
        stored.CopyFrom(event)
        stored.sequence = sequence
        return stored

    def events_after(self, sequence: int, job_id: str = "", limit: int = 500) -> list[job_pb2.Event]:
        if job_id:
            rows = self._execute(
                "SELECT sequence, body FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (job_id, sequence, limit),
            )
        else:
            rows = self._execute(
                "SELECT sequence, body FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?", (sequence, limit)
            )
        events = []
        for seq, body in rows.fetchall():
            event = job_pb2.Event.FromString(body)
            event.sequence = seq
            events.append(event)
        return events

    # audit ----------------------------------------------------------------------------------------
    # Append and read only: the store offers no way to change or remove an entry, and the schema's
    # triggers refuse an UPDATE or DELETE from anywhere else.

    def append_audit(self, entry: operator_service_pb2.AuditEntry) -> None:
        self._execute(
            "INSERT INTO audit (at_ns, principal, role, peer, method, job_id, command_id, outcome, reason, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.at.ToNanoseconds(),
                entry.principal,
                entry.role,
                entry.peer,
                entry.method,
                entry.job_id,
                entry.command_id,
                entry.outcome,
                entry.reason,
                entry.detail,
            ),
        )

    def list_audit(self, job_id: str, after: int, limit: int) -> list[operator_service_pb2.AuditEntry]:
        """Entries after sequence `after`, oldest first, of `job_id` (every entry for "")."""
        where = "sequence > ?" + (" AND job_id = ?" if job_id else "")
        params = (after, job_id) if job_id else (after,)
        rows = self._execute(
            "SELECT sequence, at_ns, principal, role, peer, method, job_id, command_id, outcome, reason, detail "
            f"FROM audit WHERE {where} ORDER BY sequence LIMIT ?",
            (*params, limit),
        )
        return [_audit_entry(row) for row in rows.fetchall()]


def _audit_entry(row: tuple) -> operator_service_pb2.AuditEntry:
    sequence, at_ns, principal, role, peer, method, job_id, command_id, outcome, reason, detail = row
    entry = operator_service_pb2.AuditEntry(
        sequence=sequence,
        principal=principal,
        role=role,
        peer=peer,
        method=method,
        job_id=job_id,
        command_id=command_id,
        outcome=outcome,
        reason=reason,
        detail=detail,
    )
    entry.at.FromNanoseconds(at_ns)
    return entry
