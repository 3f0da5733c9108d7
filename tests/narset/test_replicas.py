"""Replicated Narset: `narset serve` replicas on one PostgreSQL database serve the same job as one would.

A job's calls may land on any replica: its session, the ledger's exactly-once delivery, the decisions
and the embargoes live in the database, and each change holds the job's lock (narset/store/postgres.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from narset_testing import ServerThread, assert_refusal, attach_request, deploy, scrape, value
from replica_workload import JOB_ID, Replicas, Workload, ledger_view

from narset.client import NarsetClient
from narset.contract import reasons
from narset.server.launch import ServeProcess
from narset.v1 import (
    job_pb2,
    operator_service_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)


@pytest.fixture
def two(pg_url):
    """Two Narset servers (in this process, each with its own connection) on one PostgreSQL database."""
    first, second = ServerThread(pg_url).start(), ServerThread(pg_url).start()
    yield first, second
    first.stop()
    second.stop()


def test_a_session_superseded_on_one_replica_is_refused_on_the_other(two):
    """The session check reads the database: a re-attach through replica 2 ends the session replica 1 gave."""
    first, second = two
    with grpc.insecure_channel(first.address) as one, grpc.insecure_channel(second.address) as other:
        stub_1, stub_2 = (
            worker_service_pb2_grpc.WorkerServiceStub(one),
            worker_service_pb2_grpc.WorkerServiceStub(other),
        )
        old = stub_1.Attach(attach_request("run-7")).session_id
        report = worker_service_pb2.ReportBoundaryRequest(job_id="run-7", session_id=old, boundary=1, step=1)
        stub_2.ReportBoundary(report)  # the session replica 1 issued is good on replica 2
        new = stub_2.Attach(attach_request("run-7", session_id=old)).session_id
        report.boundary = 2
        with pytest.raises(grpc.RpcError) as refused:
            stub_1.ReportBoundary(report)
        assert_refusal(
            refused.value, grpc.StatusCode.FAILED_PRECONDITION, reasons.SESSION_SUPERSEDED, "report.session_id"
        )
        report.session_id = new
        stub_1.ReportBoundary(report)


def test_watch_on_one_replica_follows_what_happens_on_the_other(two):
    """A follow-mode watch on replica 2 sees the events of calls served by replica 1 (it polls the store)."""
    first, second = two
    with NarsetClient(first.address) as narset_1, NarsetClient(second.address) as narset_2:
        with grpc.insecure_channel(first.address) as channel:
            worker_service_pb2_grpc.WorkerServiceStub(channel).Attach(attach_request("run-7"))
        seen: list[job_pb2.Event] = []
        following = threading.Event()

        def follow() -> None:
            for event in narset_2.watch("run-7", follow=True):
                seen.append(event)
                following.set()  # the stored events are read: the stream follows from here
                if event.kind == job_pb2.EVENT_KIND_COMMAND_SUBMITTED:
                    return

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        assert following.wait(10)
        narset_1.submit(deploy("encoder.fc1", command_id="dep-1"))
        watcher.join(timeout=10)
        assert not watcher.is_alive(), "replica 2's watch did not see replica 1's command"
        assert [e.kind for e in seen] == [job_pb2.EVENT_KIND_JOB_ATTACHED, job_pb2.EVENT_KIND_COMMAND_SUBMITTED]
        assert [e.sequence for e in seen] == sorted(e.sequence for e in seen)


def test_every_replica_counts_the_shared_store_in_its_metrics(pg_url):
    """/metrics on each replica counts the jobs and commands in the database, whichever replica took them."""
    first = ServerThread(pg_url, metrics_address="127.0.0.1:0").start()
    second = ServerThread(pg_url, metrics_address="127.0.0.1:0").start()
    try:
        with grpc.insecure_channel(first.address) as channel:
            worker_service_pb2_grpc.WorkerServiceStub(channel).Attach(attach_request("run-7"))
        with NarsetClient(second.address) as narset:
            narset.submit(deploy("encoder.fc1", command_id="dep-1"))
        for server in (first, second):
            samples = scrape(server.server.metrics_port)
            assert value(samples, "narset_jobs", state="attached") == 1
            assert value(samples, "narset_commands", state="pending", kind="deploy") == 1
            assert value(samples, "narset_scaffolds_live") == 1
    finally:
        first.stop()
        second.stop()


def test_one_command_submitted_to_both_replicas_at_once_is_recorded_once(two):
    """The same command id sent to both replicas together, 20 times (a job each): one command, and the
    other answer is a duplicate of it."""
    first, second = two
    with grpc.insecure_channel(first.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        for round_ in range(20):
            stub.Attach(attach_request(f"run-{round_}"))
    with NarsetClient(first.address) as narset_1, NarsetClient(second.address) as narset_2:
        for round_ in range(20):
            command = deploy("encoder.fc1", job=f"run-{round_}", command_id="dep-1")
            answers: list[bool] = []
            barrier = threading.Barrier(2)

            def submit(narset: NarsetClient, command=command, answers=answers, barrier=barrier) -> None:
                barrier.wait()
                answers.append(narset.submit(command).duplicate)

            threads = [threading.Thread(target=submit, args=(n,)) for n in (narset_1, narset_2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(answers) == [False, True]
            [record] = narset_2.list_commands(f"run-{round_}")
            assert record.command.command_id == "dep-1"
            assert [s.scaffold_id for s in narset_1.list_scaffolds(f"run-{round_}")] == ["dep-1"]


# The acceptance test: real processes, 500 commands, kill -9 ---------------------------------------


def _events(replicas: Replicas) -> list[job_pb2.Event]:
    request = operator_service_pb2.WatchEventsRequest(job_id=JOB_ID, follow=False)
    worker, operator = replicas._stubs[0]
    return [r.event for r in operator.WatchEvents(request, timeout=60)]


def _wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class JobLock:
    """The job's advisory lock, held by the test as another replica would hold it mid-report."""

    def __init__(self, url: str) -> None:
        import psycopg

        from narset.store.postgres import job_lock_key

        self._db = psycopg.connect(url, autocommit=True)
        self._db.execute("BEGIN")
        self._db.execute("SELECT pg_advisory_xact_lock(%s)", (job_lock_key(JOB_ID),))

    def someone_waits(self) -> bool:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return self._db.execute(query).fetchone()[0] > 0

    def stored_reports(self, boundary: int) -> int:
        query = "SELECT count(*) FROM reports WHERE job_id = %s AND boundary = %s"
        return self._db.execute(query, (JOB_ID, boundary)).fetchone()[0]

    def release(self) -> None:
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


@pytest.mark.slow
def test_two_replicas_serve_one_job_like_one_and_lose_nothing_to_kill_9(postgres, tmp_path):
    """A job attached to replica 1 reports alternately to replicas 1 and 2; 500 operator commands go
    alternately to both. Replica 2 is killed with SIGKILL twice while it handles a report, and a new
    process takes its place each time: once in the middle of the report's transaction (it waits for
    the job's lock, which the test holds), once after it committed a report whose answer the job never
    got (its deadline passed while it waited). The job retries each report on replica 1. Every command
    is delivered once and applied once, and the ledger, decisions, embargoes and scaffolds are those of
    the same script run on a single replica."""
    commands = 500
    reference_url = postgres.create_schema()
    single = ServeProcess(reference_url, log_level="warning", files=tmp_path / "single")
    replicas = Replicas([single.address])
    try:
        reference_run = Workload(replicas, commands)
        reference_run.run()
        reference = ledger_view(replicas)
    finally:
        replicas.close()
        single.terminate()

    url = postgres.create_schema()
    servers = [ServeProcess(url, log_level="warning", files=tmp_path / f"replica-{i}") for i in (1, 2)]
    replicas = Replicas([s.address for s in servers])
    last = reference_run.job.boundary
    kills = {"mid-transaction": last // 3, "after its commit": 2 * last // 3}  # from these boundaries on
    killed: dict[str, int] = {}

    def kill_replica_2_during(replica: int, request: worker_service_pb2.ReportBoundaryRequest):
        due = [k for k, at in kills.items() if k not in killed and request.boundary >= at]
        if replica != 1 or not due:
            return None
        lock = JobLock(url)
        worker = replicas._stubs[1][0]
        try:
            if due[0] == "mid-transaction":
                call = worker.ReportBoundary.future(request, timeout=30)
                _wait_for(lock.someone_waits)  # replica 2 is inside the report's transaction
                os.kill(servers[-1].pid, signal.SIGKILL)
                with pytest.raises(grpc.RpcError) as dead:
                    call.result()
                assert dead.value.code() == grpc.StatusCode.UNAVAILABLE
                lock.release()
                assert lock.stored_reports(request.boundary) == 0  # its transaction died with it
            else:
                with pytest.raises(grpc.RpcError) as lost:
                    worker.ReportBoundary(request, timeout=1.0)  # waits for the lock past its deadline
                assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                lock.release()
                _wait_for(lambda: lock.stored_reports(request.boundary) == 1)  # committed, answer lost
                os.kill(servers[-1].pid, signal.SIGKILL)
        finally:
            lock.close()
        servers[-1].process.wait()
        killed[due[0]] = request.boundary
        answer = replicas.call(0, "worker", "ReportBoundary", request)  # the job retries on replica 1
        servers.append(ServeProcess(url, log_level="warning", files=tmp_path / f"replica-{len(servers) + 1}"))
        replicas.replace(1, servers[-1].address)
        return answer

    try:
        workload = Workload(replicas, commands, before_report=kill_replica_2_during)
        workload.run()
        view = ledger_view(replicas)
        events = _events(replicas)
    finally:
        replicas.close()
        for server in servers:
            if server.process.poll() is None:
                server.terminate()
        postgres.drop_schema(reference_url)
        postgres.drop_schema(url)

    assert set(killed) == set(kills), killed
    # Both replicas served the job and the operator.
    assert min(workload.reported_to.values()) > 100 and min(workload.submitted_to.values()) > 100
    assert len(workload.submitted) == commands == len(set(workload.submitted))
    # Nothing lost, nothing twice: the job applied every command in the ledger once, at the boundary the
    # ledger records, and each went DELIVERED once and APPLIED once.
    ledger = {entry[0]: entry for entry in view["ledger"]}
    assert set(workload.submitted) <= set(ledger)
    assert {entry[4] for entry in view["ledger"]} == {"COMMAND_STATE_APPLIED"}
    assert set(workload.job.applied) == set(ledger) and set(workload.job.applied.values()) == {1}
    assert all(workload.job.applied_at[c] == ledger[c][6] for c in ledger)
    for kind in (job_pb2.EVENT_KIND_COMMAND_DELIVERED, job_pb2.EVENT_KIND_COMMAND_APPLIED):
        counts = Counter(e.attributes["command_id"] for e in events if e.kind == kind)
        assert counts == Counter(dict.fromkeys(ledger, 1)), job_pb2.EventKind.Name(kind)
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    reported = Counter(int(e.attributes["boundary"]) for e in events if e.kind == job_pb2.EVENT_KIND_BOUNDARY_REPORTED)
    assert reported[killed["mid-transaction"]] == 1 and reported[killed["after its commit"]] == 2
    # The same history as on one replica.
    outcomes = Counter(d[3] for d in view["decisions"])
    assert outcomes["DECISION_OUTCOME_FUSE"] and outcomes["DECISION_OUTCOME_PRUNE"], outcomes
    assert view["embargoes"]
    assert view == reference


def test_the_control_plane_benchmark_runs_on_both_stores(postgres, tmp_path):
    """benchmarks/control_plane.py measures SQLite, and PostgreSQL with two replicas, and says which."""
    benchmark = Path(__file__).resolve().parents[2] / "benchmarks" / "control_plane.py"
    url = postgres.create_schema()
    try:
        for flags, store in (
            ([], "SQLite, a fresh file"),
            (["--db", url, "--replicas", "2"], "PostgreSQL, 2 replica(s)"),
        ):
            argv = [sys.executable, str(benchmark), "--jobs", "4", "--seconds", "1", *flags]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            figures = dict(
                line.split(None, 1) for line in done.stdout.splitlines() if line.startswith(("store", "reports/s"))
            )
            assert figures["store"].startswith(store) and int(figures["reports/s"]) > 0, done.stdout
    finally:
        postgres.drop_schema(url)
