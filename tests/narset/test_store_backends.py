"""The store's repository behaves the same on SQLite and PostgreSQL, and on PostgreSQL its locks give
transactions on one job one order while other jobs go on (narset/store/postgres.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from narset.control.events import WATCH_PAGE, EventHub
from narset.store import DriverMissing, open_store
from narset.v1 import command_pb2, job_pb2, operator_service_pb2, telemetry_pb2

pytestmark = pytest.mark.backends
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(db):
    opened = open_store(db)
    yield opened
    opened.close()


def _command(command_id: str, job_id: str = "run-7", state=command_pb2.COMMAND_STATE_PENDING):
    record = command_pb2.CommandRecord(state=state, scaffold_id=command_id)
    record.command.job_id, record.command.command_id = job_id, command_id
    record.command.deploy.module = "fc1"
    return record


def _with_job(store, job_id: str = "run-7") -> None:
    with store.transaction(job=job_id):
        store.put_job(job_pb2.Job(job_id=job_id, state=job_pb2.JOB_STATE_ATTACHED))


def test_repository_round_trips_and_orders(store):
    """Upserts keep one row and their place; ledger, scaffold and decision order are insertion order."""
    _with_job(store)
    with store.transaction(job="run-7"):
        store.set_session("run-7", "digest-1")
        for command_id in ("b", "a", "c"):
            store.put_command(_command(command_id))
        store.put_command(_command("a", state=command_pb2.COMMAND_STATE_DELIVERED))  # an update keeps its place
        for scaffold_id in ("s2", "s1"):
            store.put_scaffold(job_pb2.Scaffold(scaffold_id=scaffold_id, job_id="run-7", module=scaffold_id))
        store.put_scaffold(job_pb2.Scaffold(scaffold_id="s2", job_id="run-7", module="moved", stage=3))
        for decision_id, boundary in (("d2", 4), ("d1", 4), ("d0", 3)):
            store.put_decision(telemetry_pb2.Decision(decision_id=decision_id, job_id="run-7", boundary=boundary))
        for boundary in (2, 1, 2):
            store.put_report("run-7", boundary, float(boundary), f"report {boundary}".encode())
        store.put_embargo("run-7", job_pb2.RegionEmbargo(region="enc", until_boundary=2**53, failures=1))
        store.put_embargo("run-7", job_pb2.RegionEmbargo(region="enc", until_boundary=9, failures=2))
        store.add_scaffold_history("run-7", "s1", job_pb2.ScaffoldBoundary(boundary=1, alpha=0.1))
        store.add_scaffold_history("run-7", "s1", job_pb2.ScaffoldBoundary(boundary=1, alpha=0.2))
    assert store.session_digest("run-7") == "digest-1" and store.job_of_session("digest-1") == "run-7"
    assert store.job_of_session("") is None and store.session_digest("nope") is None
    assert [r.command.command_id for r in store.list_commands("run-7")] == ["b", "a", "c"]
    assert [r.command.command_id for r in store.list_commands("run-7", [command_pb2.COMMAND_STATE_PENDING])] == [
        "b",
        "c",
    ]
    assert [(s.scaffold_id, s.module) for s in store.list_scaffolds("run-7")] == [("s2", "moved"), ("s1", "s1")]
    assert [d.decision_id for d in store.list_decisions("run-7")] == ["d0", "d2", "d1"]
    assert store.report_bodies("run-7", 1, 2) == [(1, b"report 1"), (2, b"report 2")]
    assert store.list_embargoes("run-7") == [job_pb2.RegionEmbargo(region="enc", until_boundary=9, failures=2)]
    assert [h.alpha for h in store.scaffold_history("run-7", "s1")] == pytest.approx([0.2])


def test_a_failed_transaction_leaves_nothing_and_nested_ones_join(store):
    _with_job(store)
    with pytest.raises(RuntimeError, match="boom"), store.transaction(job="run-7"):
        store.put_command(_command("a"))
        with store.transaction(job="run-7"):  # joins: the outer failure undoes it too
            store.put_command(_command("b"))
        raise RuntimeError("boom")
    assert store.list_commands("run-7") == []
    with store.transaction(job="run-7"):
        store.put_command(_command("c"))
    assert [r.command.command_id for r in store.list_commands("run-7")] == ["c"]


def test_events_and_audit_append_in_sequence_and_the_audit_log_refuses_changes(store):
    _with_job(store)
    with store.transaction(job="run-7"):
        first = store.append_event(job_pb2.Event(job_id="run-7", message="one"))
        second = store.append_event(job_pb2.Event(job_id="other", message="two"))
        entry = operator_service_pb2.AuditEntry(principal="alice", method="SubmitCommand", job_id="run-7")
        store.append_audit(entry)
        store.append_audit(entry)
    assert second.sequence > first.sequence > 0
    assert [e.message for e in store.events_after(0)] == ["one", "two"]
    assert [e.message for e in store.events_after(first.sequence)] == ["two"]
    assert [e.message for e in store.events_after(0, "run-7")] == ["one"]
    audit = store.list_audit("run-7", 0, 10)
    assert [a.sequence for a in audit] == sorted(a.sequence for a in audit) and len(audit) == 2
    with pytest.raises(Exception, match="append-only"), store.transaction():
        store._execute("UPDATE audit SET principal = 'mallory'")
    with pytest.raises(Exception, match="append-only"), store.transaction():
        store._execute("DELETE FROM audit")
    assert len(store.list_audit("", 0, 10)) == 2


def test_text_with_a_nul_is_stored_and_found(store):
    """A NUL in an id or a name (hostile input) neither fails the statement nor loses the row."""
    _with_job(store, "nul\x00job")
    assert store.get_job("nul\x00job") is not None
    assert [j.job_id for j in store.list_jobs()] == ["nul\x00job"]  # the body keeps the exact bytes
    with store.transaction():
        store.append_audit(operator_service_pb2.AuditEntry(principal="p", job_id="a\x00b", detail="x\x00y"))
    assert len(store.list_audit("", 0, 10)) == 1


def test_psycopg_is_loaded_only_for_a_postgresql_store(tmp_path):
    """Narset's server, CLI and client, and an SQLite store, import no psycopg (the core install lacks it)."""
    code = (
        "import sys; import narset.server.app, narset.cli.main, narset.client\n"
        "from narset.store import open_store\n"
        f"open_store({str(tmp_path / 'x.db')!r}).close()\n"
        "assert not [m for m in sys.modules if m.startswith('psycopg')], 'psycopg loaded'\n"
        "sys.modules['psycopg'] = None  # as if not installed\n"
        "from narset.store import DriverMissing\n"
        "try:\n    open_store('postgresql://narset@127.0.0.1:1/x')\nexcept DriverMissing as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install 'narset-kasmina[postgres]'" in done.stdout
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "narset").rglob("*.py"))
        if "import psycopg" in path.read_text() or "from psycopg" in path.read_text()
    ]
    assert importers == ["narset/store/postgres.py"]
    assert issubclass(DriverMissing, RuntimeError)


# PostgreSQL's locks (SQLite has one writer: every transaction is alone) ---------------------------------------


def _someone_waits_for_a_lock(store) -> bool:
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    return store._execute(query).fetchone()[0] > 0


def _until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_transactions_on_one_job_wait_for_each_other_and_other_jobs_do_not(pg_url):
    """While replica A holds job run-7, B's transaction on run-8 goes ahead, and B's transaction on run-7
    waits for A's commit and then sees what A wrote."""
    a, b, observer = open_store(pg_url), open_store(pg_url), open_store(pg_url)
    try:
        _with_job(a, "run-7")
        _with_job(a, "run-8")
        held, release = threading.Event(), threading.Event()
        seen: list[str] = []

        def replica_a() -> None:
            with a.transaction(job="run-7"):
                a.put_command(_command("from-a"))
                held.set()
                release.wait(30)

        def replica_b() -> None:
            with b.transaction(job="run-7"):
                seen.extend(r.command.command_id for r in b.list_commands("run-7"))

        first = threading.Thread(target=replica_a)
        first.start()
        assert held.wait(30)
        with b.transaction(job="run-8"):  # another job: does not wait for A
            b.put_command(_command("other", job_id="run-8"))
        second = threading.Thread(target=replica_b)
        second.start()
        _until(lambda: _someone_waits_for_a_lock(observer))
        assert seen == [] and second.is_alive()  # B waits for run-7
        release.set()
        first.join(30)
        second.join(30)
        assert seen == ["from-a"]
    finally:
        for store in (a, b, observer):
            store.close()


def test_event_sequence_order_is_commit_order(pg_url):
    """An event appended later cannot commit before an earlier one is visible: a reader that has passed a
    sequence number never finds an earlier one appearing behind it."""
    a, b, observer = open_store(pg_url), open_store(pg_url), open_store(pg_url)
    try:
        appended, release = threading.Event(), threading.Event()

        def slow_commit() -> None:
            with a.transaction(job="run-7"):
                a.append_event(job_pb2.Event(job_id="run-7", message="first"))
                appended.set()
                release.wait(30)

        def second_append() -> None:
            with b.transaction(job="run-8"):
                b.append_event(job_pb2.Event(job_id="run-8", message="second"))

        first = threading.Thread(target=slow_commit)
        first.start()
        assert appended.wait(30)
        second = threading.Thread(target=second_append)
        second.start()
        _until(lambda: _someone_waits_for_a_lock(observer))  # the second append waits for the first commit
        assert observer.events_after(0) == []
        release.set()
        first.join(30)
        second.join(30)
        assert [e.message for e in observer.events_after(0)] == ["first", "second"]
    finally:
        for store in (a, b, observer):
            store.close()


def test_a_broken_connection_is_reopened_at_the_next_transaction(pg_url):
    store = open_store(pg_url)
    try:
        _with_job(store)
        admin = open_store(pg_url)
        try:
            (pid,) = store._execute("SELECT pg_backend_pid()").fetchone()
            with admin.transaction():
                admin._execute("SELECT pg_terminate_backend(?)", (pid,))
        finally:
            admin.close()
        with store.transaction(job="run-7"):  # nothing was sent on the broken one: opened again at BEGIN
            assert store.get_job("run-7").job_id == "run-7"
        assert store._execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    finally:
        store.close()


async def test_a_watch_without_follow_returns_every_stored_event(store):
    """Not only the first page: `narset watch --no-follow` ends after the last stored event."""
    hub = EventHub(store)
    with store.transaction(job="run-7"):
        for i in range(WATCH_PAGE * 2 + 1):
            hub.emit("run-7", job_pb2.EVENT_KIND_BOUNDARY_REPORTED, f"boundary {i}")
    seen = [event.message async for event in hub.watch("run-7", 0, follow=False)]
    assert seen == [f"boundary {i}" for i in range(WATCH_PAGE * 2 + 1)]
