"""An operator frees a job whose worker died (issue 12): DetachJob revokes the job's session credential
at once, so that a new worker attaches without it and without waiting for the session to go stale; it
is refused to viewers and out-of-scope operators, recorded in the audit log and among the job's events."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from narset_testing import ServerThread, assert_refusal, attach_request

from narset.cli import main
from narset.contract import reasons
from narset.control.credentials import digest
from narset.server.settings import TokenSetting
from narset.v1 import (
    job_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

PEOPLE = {"alice": ("operator", ("run-*",)), "bob": ("operator", ("other-*",)), "val": ("viewer", ("*",))}
PEOPLE |= {"launcher": ("worker", ("run-*",)), "root": ("admin", ("*",))}
TOKENS = tuple(TokenSetting(name=n, role=r, sha256=digest(f"{n}-token"), jobs=j) for n, (r, j) in PEOPLE.items())


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {name}-token"),)


@pytest.fixture
def secured(db_path) -> Iterator[ServerThread]:
    running = ServerThread(db_path, tokens=TOKENS, stale_session_s=600.0).start()
    yield running
    running.stop()


@pytest.fixture
def stubs(secured):
    with grpc.insecure_channel(secured.address) as channel:
        yield worker_service_pb2_grpc.WorkerServiceStub(channel), operator_service_pb2_grpc.OperatorServiceStub(channel)


def _detach(operator, name: str, job_id: str = "run-7", reason: str = "worker's node died"):
    request = operator_service_pb2.DetachJobRequest(job_id=job_id, reason=reason)
    return operator.DetachJob(request, metadata=bearer(name), timeout=10)


def test_an_operator_frees_a_job_whose_worker_died(stubs):
    worker, operator = stubs
    dead = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    with pytest.raises(grpc.RpcError) as held:  # the session is fresh: a new worker may not take it over
        worker.Attach(attach_request("run-7"), metadata=bearer("launcher"))
    assert_refusal(held.value, grpc.StatusCode.PERMISSION_DENIED, reasons.JOB_ATTACHED, "attach.session_id")
    job = _detach(operator, "alice").job
    assert (job.job_id, job.state, job.session_id) == ("run-7", job_pb2.JOB_STATE_DETACHED, "")
    assert _detach(operator, "alice").job.state == job_pb2.JOB_STATE_DETACHED  # a repeat changes nothing
    late = worker_service_pb2.ReportBoundaryRequest(job_id="run-7", session_id=dead, boundary=1, step=1)
    with pytest.raises(grpc.RpcError) as revoked:
        worker.ReportBoundary(late, metadata=bearer("launcher"))
    assert_refusal(revoked.value, grpc.StatusCode.FAILED_PRECONDITION, reasons.SESSION_SUPERSEDED, "report.session_id")
    fresh = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    report = worker_service_pb2.ReportBoundaryRequest(job_id="run-7", session_id=fresh, boundary=1, step=1)
    worker.ReportBoundary(report, metadata=bearer("launcher"))
    listed = operator.GetJob(operator_service_pb2.GetJobRequest(job_id="run-7"), metadata=bearer("val")).job
    assert (listed.state, listed.last_boundary) == (job_pb2.JOB_STATE_ATTACHED, 1)


def test_detach_job_is_for_operators_of_the_job_and_audited(secured, stubs, capsys, monkeypatch):
    worker, operator = stubs
    worker.Attach(attach_request("run-7"), metadata=bearer("launcher"))
    for name, code, reason, field in (
        ("val", grpc.StatusCode.PERMISSION_DENIED, reasons.ROLE_FORBIDS, "authorization"),
        ("launcher", grpc.StatusCode.PERMISSION_DENIED, reasons.ROLE_FORBIDS, "authorization"),
        ("bob", grpc.StatusCode.PERMISSION_DENIED, reasons.JOB_OUT_OF_SCOPE, "job_id"),
    ):
        with pytest.raises(grpc.RpcError) as error:
            _detach(operator, name)
        assert_refusal(error.value, code, reason, field)
    monkeypatch.setenv("NARSET_TOKEN", "alice-token")
    assert main(["detach", "run-7", "--reason", "node lost", "--server", secured.address]) == 0
    assert "DETACHED" in capsys.readouterr().out
    entries = operator.ListAudit(operator_service_pb2.ListAuditRequest(job_id="run-7"), metadata=bearer("root"))
    detaches = [(e.principal, e.outcome, e.reason, e.detail) for e in entries.entries if e.method == "DetachJob"]
    assert [d[:3] for d in detaches] == [
        ("val", "PERMISSION_DENIED", reasons.ROLE_FORBIDS),
        ("launcher", "PERMISSION_DENIED", reasons.ROLE_FORBIDS),
        ("bob", "PERMISSION_DENIED", reasons.JOB_OUT_OF_SCOPE),
        ("alice", "OK", ""),
    ]
    assert detaches[3][3] == "reason 'node lost'"
    watch = operator_service_pb2.WatchEventsRequest(job_id="run-7", follow=False)
    events = [r.event for r in operator.WatchEvents(watch, metadata=bearer("root"))]
    assert [e.message for e in events if e.kind == job_pb2.EVENT_KIND_JOB_DETACHED] == [
        "job detached by alice: node lost"
    ]
