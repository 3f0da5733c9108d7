"""Failures of PostgreSQL that pass (a lock held past lock_timeout, a dropped connection) answer UNAVAILABLE
with reason STORE_UNAVAILABLE and change nothing, the replica stays responsive, and the Python client and
the worker's link call again (review, items 1 and 2)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from narset_testing import ServerThread, assert_refusal, attach_request, deploy

from kasmina_worker.link.narset_transport import NarsetTransport
from narset.client import NarsetClient
from narset.contract import reasons
from narset.store.postgres import job_lock_key
from narset.v1 import (
    operator_service_pb2,
    operator_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

psycopg = pytest.importorskip("psycopg")

LOCK_TIMEOUT_S = 0.3


@pytest.fixture
def replica(pg_url: str) -> Iterator[ServerThread]:
    """A server on PostgreSQL whose calls wait at most 0.3 s for a lock, with job run-7 attached."""
    running = ServerThread(pg_url, postgres_lock_timeout_s=LOCK_TIMEOUT_S).start()
    with grpc.insecure_channel(running.address) as channel:
        running.session = worker_service_pb2_grpc.WorkerServiceStub(channel).Attach(attach_request("run-7")).session_id
    yield running
    running.stop()


class JobLock:
    """A job's advisory lock, held by a connection of its own (another replica's long transaction)."""

    def __init__(self, url: str, job_id: str = "run-7") -> None:
        self._db = psycopg.connect(url)  # not autocommit: the lock lasts until the transaction ends
        self._db.execute("SELECT pg_advisory_xact_lock(%s)", (job_lock_key(job_id),))

    def release(self) -> None:
        """End the transaction and its lock; safe twice."""
        if not self._db.closed:
            self._db.rollback()
            self._db.close()


@pytest.fixture
def job_lock(pg_url: str, replica: ServerThread) -> Iterator[JobLock]:
    lock = JobLock(pg_url)
    yield lock
    lock.release()


def test_transient_postgresql_errors_answer_internal(replica, job_lock, pg_url):
    """With run-7's lock held elsewhere past lock_timeout, a submit and a report are UNAVAILABLE with reason
    STORE_UNAVAILABLE (they were INTERNAL after 30 s), a read of the job is answered meanwhile, and once the
    lock is free nothing had changed and the same calls succeed."""
    with grpc.insecure_channel(replica.address) as channel:
        operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        submit = operator_service_pb2.SubmitCommandRequest(command=deploy("encoder.fc1", command_id="dep-1"))
        report = worker_service_pb2.ReportBoundaryRequest(
            job_id="run-7", session_id=replica.session, boundary=1, step=10
        )
        for call, request in ((operator.SubmitCommand, submit), (worker.ReportBoundary, report)):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
            assert_refusal(refused.value, grpc.StatusCode.UNAVAILABLE, reasons.STORE_UNAVAILABLE, "request")
            assert "nothing changed" in refused.value.details()
        assert operator.GetJob(operator_service_pb2.GetJobRequest(job_id="run-7")).job.last_boundary == 0
        job_lock.release()
        assert not operator.ListCommands(operator_service_pb2.ListCommandsRequest(job_id="run-7")).commands
        assert operator.SubmitCommand(submit).record.command.command_id == "dep-1"
        assert [c.command_id for c in worker.ReportBoundary(report).commands] == ["dep-1"]


def test_a_dropped_store_connection_answers_unavailable_then_reconnects(replica, pg_url):
    """The replica's PostgreSQL session is terminated (a failover, a restart): the next read is UNAVAILABLE with
    STORE_UNAVAILABLE, and the one after it is answered over a new connection."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        (ended,) = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'narset' AND datname = current_database()"
        ).fetchone()
    assert ended == 1
    with grpc.insecure_channel(replica.address) as channel:
        operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
        request = operator_service_pb2.GetJobRequest(job_id="run-7")
        with pytest.raises(grpc.RpcError) as refused:
            operator.GetJob(request)
        assert_refusal(refused.value, grpc.StatusCode.UNAVAILABLE, reasons.STORE_UNAVAILABLE, "request")
        assert operator.GetJob(request).job.job_id == "run-7"


def test_the_client_calls_again_after_store_unavailable(replica, job_lock, pg_url):
    """NarsetClient.submit while run-7's lock is held: refused STORE_UNAVAILABLE once, it calls again after a
    pause, and succeeds once the lock is free; the audit has the refused call and the accepted one."""
    with psycopg.connect(pg_url, autocommit=True) as watcher:

        def refused_once() -> None:
            query = "SELECT count(*) FROM audit WHERE method = 'SubmitCommand' AND outcome = 'UNAVAILABLE'"
            for _ in range(500):  # 10 s at most
                if watcher.execute(query).fetchone()[0]:
                    break
                watcher.execute("SELECT pg_sleep(0.02)")
            job_lock.release()

        releaser = threading.Thread(target=refused_once)
        releaser.start()
        with NarsetClient(replica.address) as client:
            record = client.submit(deploy("encoder.fc1", command_id="dep-1")).record
        releaser.join(10)
        audit = watcher.execute("SELECT outcome FROM audit WHERE method = 'SubmitCommand' ORDER BY sequence")
        outcomes = [outcome for (outcome,) in audit]
    assert record.command.command_id == "dep-1"
    assert outcomes[0] == "UNAVAILABLE" and outcomes[-1] == "OK" and outcomes.count("OK") == 1


def test_the_worker_link_keeps_its_session_after_store_unavailable(replica, pg_url):
    """A report answered STORE_UNAVAILABLE is dropped for this boundary and its results held, but the link keeps
    its session (nothing changed on Narset): the next boundary's report goes out on it, without re-attaching."""
    transport = NarsetTransport(replica.address, lambda: attach_request("run-8"), timeout_s=10)

    def boundary(n: int) -> worker_service_pb2.ReportBoundaryRequest:
        return worker_service_pb2.ReportBoundaryRequest(job_id="run-8", boundary=n, step=10 * n)

    try:
        transport.exchange(boundary(1))
        session = transport.session_id
        lock = JobLock(pg_url, "run-8")
        try:
            assert transport.exchange(boundary(2)) == []
            assert transport.last_error.reason == reasons.STORE_UNAVAILABLE
        finally:
            lock.release()
        assert transport.session_id == session
        transport.exchange(boundary(3))
        assert transport.last_error is None and transport.session_id == session
    finally:
        transport.close()
    with NarsetClient(replica.address) as client:
        assert client.get_job("run-8").job.last_boundary == 3
