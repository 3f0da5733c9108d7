"""Refusals carry stable reason codes: documented once, sent as rich status details, and what programs
(the worker's re-attach, the client, the CLI) decide on instead of the message text."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import grpc
import pytest
from narset_testing import assert_refusal, attach_request, deploy

from kasmina_worker.link.narset_transport import NarsetTransport
from narset.client import NarsetClient, NarsetError
from narset.contract import reasons
from narset.control.errors import STATUS_OF_REASON, Refusal
from narset.control.exchange import Exchange
from narset.v1 import command_pb2, job_pb2, operator_service_pb2, telemetry_pb2, worker_service_pb2

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "narset" / "v1"
S = telemetry_pb2


def test_every_reason_has_one_status_and_is_documented():
    """Each code is its own name, maps to exactly one status, and the service protos document it with it."""
    assert len(set(reasons.REASONS)) == len(reasons.REASONS)
    assert all(getattr(reasons, code) == code and code in reasons.__all__ for code in reasons.REASONS)
    assert set(STATUS_OF_REASON) == set(reasons.REASONS)
    comments = "\n".join((PROTO_DIR / f"{name}.proto").read_text() for name in ("worker_service", "operator_service"))
    documented = dict(re.findall(r"^// - ([A-Z_]+) \(([A-Z_]+)\): ", comments, re.MULTILINE))
    assert documented == {code: status.name for code, status in STATUS_OF_REASON.items()}


def submit_refused(stub, command: command_pb2.AdaptationCommand) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitCommand(operator_service_pb2.SubmitCommandRequest(command=command))
    return refused.value


def on_scaffold(action: str, scaffold_id: str = "a", **fields) -> command_pb2.AdaptationCommand:
    command = command_pb2.AdaptationCommand(job_id="run-7")
    body = getattr(command, action)
    body.scaffold.scaffold_id = scaffold_id
    for name, value in fields.items():
        setattr(body, name, value)
    return command


def test_refusals_of_a_scaffolds_lifecycle(client, operator_stub, worker_stub, attached):
    """Taken id, persist past the limit, a second exit in flight, an ended scaffold, a rollback of a prune."""
    precondition = grpc.StatusCode.FAILED_PRECONDITION

    def report(boundary: int, stage: int, results=()) -> worker_service_pb2.ReportBoundaryResponse:
        scaffold = S.ScaffoldReport(scaffold_id="a", module="encoder.fc1", stage=stage, alpha=0.5, ttl_ckpts=12)
        request = worker_service_pb2.ReportBoundaryRequest(
            job_id="run-7", session_id=attached.session_id, boundary=boundary, step=boundary, scaffolds=[scaffold]
        )
        request.results.extend(
            S.CommandResult(command_id=c, outcome=S.COMMAND_OUTCOME_APPLIED, boundary=boundary - 1) for c in results
        )
        return worker_stub.ReportBoundary(request)

    client.submit(deploy("encoder.fc1", command_id="a"))
    [delivered] = report(1, S.SCAFFOLD_STAGE_PENDING).commands
    report(2, S.SCAFFOLD_STAGE_GRAFTING, results=[delivered.command_id])
    taken = deploy("decoder.fc1", scaffold_id="a")
    assert_refusal(submit_refused(operator_stub, taken), precondition, reasons.SCAFFOLD_EXISTS, "deploy.scaffold_id")
    too_long = on_scaffold("persist", extra_ckpts=1000)
    assert_refusal(
        submit_refused(operator_stub, too_long), precondition, reasons.EXTENSION_LIMIT, "persist.extra_ckpts"
    )
    prune = client.submit(on_scaffold("prune")).record.command
    assert_refusal(
        submit_refused(operator_stub, on_scaffold("fold")), precondition, reasons.EXIT_IN_FLIGHT, "fold.scaffold"
    )
    assert [c.command_id for c in report(3, S.SCAFFOLD_STAGE_GRAFTING).commands] == [prune.command_id]
    report(4, S.SCAFFOLD_STAGE_PRUNED, results=[prune.command_id])
    assert_refusal(
        submit_refused(operator_stub, on_scaffold("pause")), precondition, reasons.SCAFFOLD_ENDED, "pause.scaffold"
    )
    assert_refusal(
        submit_refused(operator_stub, on_scaffold("rollback")),
        precondition,
        reasons.ROLLBACK_UNAVAILABLE,
        "rollback.scaffold",
    )


def test_worker_side_refusals(worker_stub, attached):
    """A newer protocol, a report for an unknown job and one from a superseded session, each by its code."""
    newer = attach_request(capabilities=job_pb2.WorkerCapabilities(protocol_version=99))
    with pytest.raises(grpc.RpcError) as refused:
        worker_stub.Attach(newer)
    assert_refusal(
        refused.value,
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.PROTOCOL_UNSUPPORTED,
        "attach.capabilities.protocol_version",
    )
    ghost = worker_service_pb2.ReportBoundaryRequest(job_id="ghost", session_id="s", boundary=1)
    with pytest.raises(grpc.RpcError) as refused:
        worker_stub.ReportBoundary(ghost)
    assert_refusal(refused.value, grpc.StatusCode.NOT_FOUND, reasons.JOB_NOT_FOUND, "report.job_id")
    worker_stub.Attach(attach_request("run-7"))
    stale = worker_service_pb2.ReportBoundaryRequest(job_id="run-7", session_id=attached.session_id, boundary=1)
    with pytest.raises(grpc.RpcError) as refused:
        worker_stub.ReportBoundary(stale)
    assert_refusal(refused.value, grpc.StatusCode.FAILED_PRECONDITION, reasons.SESSION_SUPERSEDED, "report.session_id")


@pytest.mark.parametrize("reason", [reasons.SESSION_SUPERSEDED, reasons.JOB_NOT_FOUND])
def test_worker_reattaches_by_reason_code_whatever_the_message(server, client, worker_stub, monkeypatch, reason):
    """Narset rewords its refusal (message and field): the worker still re-attaches, on the reason code alone."""
    seen: list[str] = []
    session_job = Exchange._session_job

    def reworded(self, job_id: str, session_id: str, field: str) -> job_pb2.Job:
        try:
            return session_job(self, job_id, session_id, field)
        except Refusal as refusal:
            seen.append(refusal.reason)
            raise Refusal(refusal.reason, "lease", "your lease on this job lapsed") from None

    monkeypatch.setattr(Exchange, "_session_job", reworded)
    transport = NarsetTransport(server.address, lambda: attach_request("run-7"), timeout_s=5)
    try:
        if reason == reasons.SESSION_SUPERSEDED:
            transport.exchange(worker_service_pb2.ReportBoundaryRequest(job_id="run-7", boundary=1, step=1))
            worker_stub.Attach(attach_request("run-7"))  # another attach of the job takes over
        else:
            transport.session_id = "of-a-narset-whose-store-is-gone"  # this Narset never saw the job
        transport.exchange(worker_service_pb2.ReportBoundaryRequest(job_id="run-7", boundary=2, step=2))
        assert transport.last_error is None
        assert seen == [reason]
        assert client.get_job("run-7").job.last_boundary == 2
    finally:
        transport.close()


def test_client_error_exposes_reason_and_field(server, client, attached, unused_tcp_port):
    """NarsetError carries the reason code and field, on unary calls and streams; none when unreachable."""
    with pytest.raises(NarsetError) as refused:
        client.get_scaffold("run-7", "ghost")
    assert (refused.value.code, refused.value.reason, refused.value.field) == (
        grpc.StatusCode.NOT_FOUND,
        reasons.SCAFFOLD_NOT_FOUND,
        "scaffold_id",
    )
    with pytest.raises(NarsetError) as refused:
        list(client.watch("ghost", follow=False))
    assert (refused.value.reason, refused.value.field) == (reasons.JOB_NOT_FOUND, "job_id")
    assert refused.value.details == "job_id: no job 'ghost'"
    with pytest.raises(NarsetError) as refused:
        list(client.watch(after_sequence=-1, follow=False))
    assert (refused.value.reason, refused.value.field) == (reasons.INVALID_FIELD, "after_sequence")
    with NarsetClient(f"127.0.0.1:{unused_tcp_port}", timeout_s=1) as nowhere, pytest.raises(NarsetError) as down:
        nowhere.list_jobs()
    assert (down.value.code, down.value.reason, down.value.field) == (grpc.StatusCode.UNAVAILABLE, "", "")


def test_a_refusal_crosses_a_process_boundary_intact(client):
    """A NarsetError pickles with its status, message, reason and field (a process pool re-raises it whole)."""
    with pytest.raises(NarsetError) as refused:
        client.submit(deploy("no.such.module", job="nobody"))
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (copy.code, copy.details, copy.reason, copy.field) == (
        refused.value.code,
        refused.value.details,
        refused.value.reason,
        refused.value.field,
    )
    assert copy.reason and str(copy) == str(refused.value)


def test_refusal_field_descriptions_can_come_out_empty_or_garbled(worker_stub, attached):
    """A report refused at a 200-character non-ASCII metric name: the field is cut to its budget and the
    description is the whole reason, neither empty nor holding part of the field."""
    request = worker_service_pb2.ReportBoundaryRequest(
        job_id="run-7", session_id=attached.session_id, boundary=1, step=10, metrics={"é" * 200: float("nan")}
    )
    with pytest.raises(grpc.RpcError) as refused:
        worker_stub.ReportBoundary(request)
    field = "report.metrics[" + "é" * 30 + "..."  # 200 bytes as gRPC encodes it: 15 + 30 x 6 + 3
    [violation] = assert_refusal(refused.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_FIELD, field)
    assert violation.description == "must be finite, got nan"
    assert refused.value.details() == f"{field}: must be finite, got nan"
