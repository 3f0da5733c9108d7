"""A throwaway PostgreSQL server for the tests (and the benchmark): initdb into a temporary folder,
`postgres` on a free loopback port, a fresh database per test.

The binaries come from `$NARSET_PG_BIN` (that folder only), else `initdb` on the PATH, else Debian's
/usr/lib/postgresql/<version>/bin (the `postgresql` package, which .ci/run installs where missing).
PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user (Debian's
package creates it), else as `nobody`, in a folder under /tmp that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from narset.server.launch import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_binaries"]

ADMIN = "narset"  # the superuser initdb creates; trust authentication on loopback


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_binaries() -> Path:
    """The folder holding initdb and postgres."""
    named = os.environ.get("NARSET_PG_BIN")
    if named:
        candidates = [Path(named)]
    else:
        on_path = shutil.which("initdb")
        candidates = [Path(on_path).resolve().parent] if on_path else []
        debian = Path("/usr/lib/postgresql").glob("*/bin")
        candidates += sorted(debian, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) on the PATH, in $NARSET_PG_BIN or in "
        "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package"
    )


def _run_as() -> dict:
    """subprocess arguments that drop root for a user PostgreSQL accepts; none when not root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    raise PostgresUnavailable("running as root, and neither a `postgres` nor a `nobody` user to run PostgreSQL as")


class PostgresServer:
    """A private PostgreSQL cluster; `url(db)` names one of its databases. Stop it with `stop()`.

    `durable=False` (the tests) turns off fsync: nothing here survives the machine, and the tests
    kill Narset, never PostgreSQL. The benchmark keeps PostgreSQL's durable defaults.
    """

    def __init__(self, durable: bool = False, timeout_s: float = 60.0) -> None:
        import psycopg  # the tests that need a server also need the driver

        self._psycopg = psycopg
        binaries = find_binaries()
        as_user = _run_as()
        self.folder = Path(tempfile.mkdtemp(prefix="narset-pg-"))
        self.process: subprocess.Popen | None = None
        try:
            if as_user:
                os.chown(self.folder, as_user["user"], as_user["group"])
            data = self.folder / "data"
            initdb = [str(binaries / "initdb"), "-D", str(data), "-U", ADMIN, "-A", "trust"]
            initdb += ["-E", "UTF8", "--locale=C", "--no-sync"]
            done = subprocess.run(initdb, capture_output=True, text=True, timeout=timeout_s, **as_user)
            if done.returncode != 0:
                raise PostgresUnavailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            settings = ["-c", "max_connections=200", "-c", "shared_buffers=128MB"]
            if not durable:
                settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
            self.log_path = self.folder / "postgres.log"
            for _ in range(5):  # a free port can be taken between the probe and the bind: try another
                self.port = free_port()
                argv = [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.folder)]
                argv += ["-c", "listen_addresses=127.0.0.1", *settings]
                with open(self.log_path, "ab") as log:
                    self.process = subprocess.Popen(argv, stdout=log, stderr=log, **as_user)
                if self._wait_ready(timeout_s):
                    break
            else:
                raise PostgresUnavailable(f"postgres did not start: {self.log_path.read_text()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                self._psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except self._psycopg.OperationalError:
                time.sleep(0.05)
        self.process.kill()
        self.process.wait()
        return False

    def url(self, database: str) -> str:
        return f"postgresql://{ADMIN}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with self._psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_schema(self, database: str = "narset_tests") -> str:
        """A new empty schema in `database` (made at first use); the URL of the database with that schema
        as its search path, where Narset's tables go. Cheaper than a database per test."""
        with self._psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                admin.execute(f'CREATE DATABASE "{database}"')
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self._psycopg.connect(self.url(database), autocommit=True) as owner:
            owner.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url(database)}?options=-csearch_path%3D{name}"

    def drop_schema(self, url: str) -> None:
        base, _, options = url.partition("?options=-csearch_path%3D")
        with self._psycopg.connect(base, autocommit=True) as owner:
            owner.execute(f'DROP SCHEMA IF EXISTS "{options}" CASCADE')

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended), then remove the cluster; safe twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
