"""Narset's store on PostgreSQL (psycopg 3), for several `narset serve` replicas on one database.

Imported only for a `postgresql://` URL (`narset.store.open_store`): the core install, without the
`postgres` extra, never loads psycopg.

**Concurrency: one advisory lock per job, taken first in every transaction that changes the job.**
Every change Narset makes is about one job (an attach, a report, a detach, a submitted command, a
policy), and every one runs in a transaction opened with `transaction(job=...)`, whose first
statement is `pg_advisory_xact_lock(<64-bit key of the job id>)`. Transactions on the same job, on
whichever replica, therefore run one after the other, each seeing everything the previous one
committed (READ COMMITTED takes a fresh snapshot per statement, and a lock is released only after
its transaction's commit is visible). That is the serial order the single SQLite writer gives, and
it is what the ledger's exactly-once delivery, the decisions, the embargoes and the session check
rely on: a report read on replica B sees the command that replica A delivered a moment ago.
Transactions on different jobs run in parallel.

Why not the alternatives: a row lock (`SELECT ... FOR UPDATE` on the job's row) cannot guard a job
that has no row yet (two first attaches of one job would both insert it), and SERIALIZABLE would
abort and retry whole reports whenever two replicas touch the same job, repeating the decision
engine's work for nothing, where waiting a few milliseconds for the lock is all that is needed.

Appends to the two logs that readers page through by sequence (events, read by `narset watch`, and
the audit log) take one more lock, global, at their first append in a transaction: sequence numbers
are drawn when a row is inserted but become visible when its transaction commits, and two
transactions committing out of order would let a reader that is past the later one skip the
earlier one for ever. Under the lock, sequence order is commit order.

Locks are taken in one order, so no two transactions wait on each other: the job's advisory lock,
then row locks, then the global append lock. Row locks fall on the job's own rows, except in the
one table all jobs share, blueprints, whose rows are upserted in name order: a job's own blueprints
(`<job id>\\x1f<name>`, under the job's lock) at attach, the built-ins (no job's) at start-up, which
replicas starting together take in the same order.

**Failures that pass.** Every session sets `lock_timeout` (`LOCK_TIMEOUT_S` unless configured: a
replica waits for a lock on its event loop, health checks included, so a lock wait ends in an error
after a few seconds rather than hanging the replica) and `idle_in_transaction_session_timeout` (a
replica that stops mid-transaction, paused or cut off, has its transaction ended and its locks
released by the server). A lock wait past the timeout, a deadlock, a lost connection, a server
shutting down or failing over end the statement with an error that passes: the transaction is rolled
back and the store raises `StoreUnavailable`, which the server answers UNAVAILABLE (STORE_UNAVAILABLE),
nothing changed, for the client to call again. A connection lost at COMMIT is the exception: the
commit may have happened, so that error is not StoreUnavailable (the call fails INTERNAL). A broken
connection is reopened at the next transaction.

Schema versions are rows of `narset_schema`, migrated at open under an advisory lock, so replicas
starting together migrate once. PostgreSQL text cannot hold NUL: a NUL in a text parameter (only
hostile input carries one) is stored as U+FFFD; the protobuf bodies keep the exact bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import structlog
from psycopg.pq import TransactionStatus

from narset.store.migrations import POSTGRES_MIGRATIONS
from narset.store.store import LOCK_TIMEOUT_S, Store, StoreUnavailable
from narset.v1 import job_pb2, operator_service_pb2

__all__ = ["PostgresStore", "job_lock_key", "shown_url"]

log = structlog.get_logger("narset.store")

IDLE_IN_TRANSACTION_TIMEOUT = "15s"  # Narset's transactions never idle: one that does has stopped
# SQLSTATE classes of errors that pass, after which the server has ended the statement and Narset rolls
# the transaction back: connection exception, transaction rollback (deadlock, serialization failure),
# insufficient resources, operator intervention (shutdown, cancel); and a lock wait past lock_timeout.
_PASSING_CLASSES = ("08", "40", "53", "57")
_LOCK_NOT_AVAILABLE = "55P03"


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for `name`, the same in every process."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def job_lock_key(job_id: str) -> int:
    return _lock_key(f"narset.job:{job_id}")


APPEND_LOCK = _lock_key("narset.append")  # events and audit: sequence order is commit order
MIGRATE_LOCK = _lock_key("narset.migrate")


def shown_url(url: str) -> str:
    """`url` without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.partition(':')[0]}:***@{host}"


def _text_safe(params: tuple) -> tuple:
    if not any(isinstance(p, str) and "\x00" in p for p in params):
        return params
    return tuple(p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params)


class PostgresStore(Store):
    """The repository on a PostgreSQL database shared by every replica; one connection per process."""

    shared = True
    _BYTE_ORDER = ' COLLATE "C"'  # the database's default collation may be a language's (initdb --locale)

    def __init__(self, url: str, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        if not lock_timeout_s > 0:
            raise ValueError(f"lock_timeout_s must be > 0, got {lock_timeout_s}")
        super().__init__(None, url)
        self._url = url
        self._lock_timeout_ms = max(1, round(lock_timeout_s * 1000))
        self._queries: dict[str, str] = {}
        self._appending = False  # the global append lock is held by the open transaction
        self._db = self._connect()

    @classmethod
    def open(cls, url: str, lock_timeout_s: float = LOCK_TIMEOUT_S) -> PostgresStore:  # type: ignore[override]
        """Connect to the database at `url` and migrate its schema."""
        return cls(url, lock_timeout_s)._migrated()

    @property
    def shown(self) -> str:
        return shown_url(self._url)

    def _connect(self) -> psycopg.Connection:
        settings = psycopg.conninfo.conninfo_to_dict(self._url)
        extra = {} if "application_name" in settings else {"application_name": "narset"}
        db = psycopg.connect(self._url, autocommit=True, **extra)
        db.execute(f"SET lock_timeout = '{self._lock_timeout_ms}ms'")
        db.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'")
        return db

    def _connection(self) -> psycopg.Connection:
        """The connection, reopened if it broke (the server restarted, a failover)."""
        if self._db is None:
            raise RuntimeError("the store is closed")
        if self._db.closed:
            log.warning("store.reconnecting", url=self.shown)
            with self._unavailable_if_passing():  # the server is not back yet: a failure that passes
                self._db = self._connect()
        return self._db

    def _migrate(self) -> None:
        while True:
            with self.transaction():
                self._execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
                if self._execute("SELECT to_regclass('narset_schema')").fetchone()[0] is None:
                    self._execute("CREATE TABLE narset_schema (version INTEGER NOT NULL)")
                    self._execute("INSERT INTO narset_schema (version) VALUES (0)")
                (version,) = self._execute("SELECT version FROM narset_schema").fetchone()
                if version > len(POSTGRES_MIGRATIONS):
                    raise RuntimeError(
                        f"database {self.shown} has schema version {version}, newer than this Narset "
                        f"({len(POSTGRES_MIGRATIONS)}); upgrade Narset"
                    )
                if version == len(POSTGRES_MIGRATIONS):
                    return
                # The whole script in the migration's transaction (PostgreSQL's DDL is transactional):
                # sent without parameters, so the server parses it, `$$` bodies and all.
                self._db.execute(POSTGRES_MIGRATIONS[version])
                self._execute("UPDATE narset_schema SET version = ?", (version + 1,))
            log.info("store.migrated", url=self.shown, schema_version=version + 1)

    @contextmanager
    def _unavailable_if_passing(self, committing: bool = False) -> Iterator[None]:
        """psycopg's errors that pass as StoreUnavailable; at COMMIT only a certain rollback (a deadlock or
        a serialization failure), since a commit whose connection was lost may have happened."""
        try:
            yield
        except psycopg.OperationalError as error:
            state = error.sqlstate
            if committing:
                passing = state is not None and state.startswith("40")
            else:
                passing = state is None or state[:2] in _PASSING_CLASSES or state == _LOCK_NOT_AVAILABLE
            if not passing:
                raise
            log.warning("store.unavailable", url=self.shown, sqlstate=state, error=str(error).strip())
            raise StoreUnavailable(f"PostgreSQL: {type(error).__name__}" + (f" ({state})" if state else "")) from error

    @contextmanager
    def transaction(self, job: str | None = None) -> Iterator[None]:
        db = self._connection()
        if db.info.transaction_status != TransactionStatus.IDLE:
            if job is not None:
                self._lock_job(job)
            yield
            return
        with self._unavailable_if_passing():
            try:
                db.execute("BEGIN")
            except psycopg.OperationalError:
                if not db.closed:
                    raise
                db = self._connection()  # the server went away since the last call: nothing was sent yet
                db.execute("BEGIN")
        self._appending = False
        try:
            if job is not None:
                self._lock_job(job)
            yield
        except BaseException:
            self._rollback()
            raise
        started = time.perf_counter()
        try:
            with self._unavailable_if_passing(committing=True):
                db.execute("COMMIT")
        finally:
            self._appending = False
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)

    def _rollback(self) -> None:
        self._appending = False
        try:
            self._db.execute("ROLLBACK")
        except psycopg.Error:
            self._db.close()  # broken: reopened at the next transaction

    def _lock_job(self, job_id: str) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (job_lock_key(job_id),))

    def _lock_appends(self) -> None:
        if not self._appending:
            self._execute("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK,))
            self._appending = True

    # the dialect ----------------------------------------------------------------------------------

    def _sql(self, query: str) -> str:
        translated = self._queries.get(query)
        if translated is None:
            # The repository's queries hold no literal `?` or `%`: placeholders are all there is.
            translated = self._queries[query] = query.replace("?", "%s")
        return translated

    def _execute(self, query: str, params: tuple = ()):
        with self._unavailable_if_passing():
            return self._connection().execute(self._sql(query), _text_safe(params), binary=True)

    def _executemany(self, query: str, rows: list[tuple]) -> None:
        if rows:
            with self._unavailable_if_passing(), self._connection().cursor(binary=True) as cursor:
                cursor.executemany(self._sql(query), [_text_safe(row) for row in rows])

    def _insert_id(self, query: str, params: tuple, column: str) -> int:
        return self._execute(f"{query} RETURNING {column}", params).fetchone()[0]

    # appends in commit order ----------------------------------------------------------------------

    def append_event(self, event: job_pb2.Event) -> job_pb2.Event:
        with self.transaction():
            self._lock_appends()
            return super().append_event(event)

    def append_audit(self, entry: operator_service_pb2.AuditEntry) -> None:
        with self.transaction():
            self._lock_appends()
            super().append_audit(entry)
