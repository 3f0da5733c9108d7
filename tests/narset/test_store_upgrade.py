"""An existing database file, written by an older Narset, upgraded in place by the migrations appended since."""

from __future__ import annotations

import sqlite3

from narset.store import Store, store
from narset.store.migrations import MIGRATIONS
from narset.v1 import command_pb2, job_pb2, telemetry_pb2


def _command(job_id: str, command_id: str) -> command_pb2.CommandRecord:
    record = command_pb2.CommandRecord(state=command_pb2.COMMAND_STATE_PENDING, scaffold_id=command_id)
    record.command.job_id, record.command.command_id = job_id, command_id
    record.command.deploy.module = "fc1"
    return record


def _first_schema_file(path, monkeypatch) -> None:
    """A database as the first schema left it, with two jobs, three commands and two decisions."""
    monkeypatch.setattr(store, "MIGRATIONS", MIGRATIONS[:1])
    Store.open(path).close()
    monkeypatch.setattr(store, "MIGRATIONS", MIGRATIONS)
    with sqlite3.connect(path) as db:
        for job_id in ("run-7", "run-8"):
            body = job_pb2.Job(job_id=job_id).SerializeToString()
            db.execute("INSERT INTO jobs (job_id, state, session_id, body) VALUES (?, 1, 's', ?)", (job_id, body))
        for seq, (job_id, command_id) in enumerate([("run-7", "b"), ("run-8", "c"), ("run-7", "a")], start=1):
            db.execute(
                "INSERT INTO commands (seq, command_id, job_id, state, action, scaffold_id, body) "
                "VALUES (?, ?, ?, 1, 'deploy', ?, ?)",
                (seq, command_id, job_id, command_id, _command(job_id, command_id).SerializeToString()),
            )
        for decision_id in ("d2", "d1"):
            decision = telemetry_pb2.Decision(decision_id=decision_id, job_id="run-7", boundary=4)
            db.execute(
                "INSERT INTO decisions (decision_id, job_id, boundary, body) VALUES (?, 'run-7', 4, ?)",
                (decision_id, decision.SerializeToString()),
            )


def test_upgrading_a_database_keeps_its_ledger_and_scopes_ids_per_job(tmp_path, monkeypatch):
    """Rows, ledger order and decision order survive; afterwards one id can name a command in each job."""
    path = tmp_path / "narset.db"
    _first_schema_file(path, monkeypatch)
    upgraded = Store.open(path)
    try:
        assert [r.command.command_id for r in upgraded.list_commands("run-7")] == ["b", "a"]
        assert upgraded.get_command("run-8", "c") == _command("run-8", "c")
        assert upgraded.get_command("run-7", "c") is None
        assert [d.decision_id for d in upgraded.list_decisions("run-7")] == ["d2", "d1"]
        with upgraded.transaction():
            upgraded.put_command(_command("run-8", "a"))
        assert [r.command.command_id for r in upgraded.list_commands("run-8")] == ["c", "a"]
        assert upgraded.get_command("run-7", "a") == _command("run-7", "a")
    finally:
        upgraded.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        # The ledger's sequence carries on after the upgrade: a new command never reuses an old seq.
        assert db.execute("SELECT seq FROM commands WHERE job_id = 'run-8' AND command_id = 'a'").fetchone() == (4,)
