"""The checkpoint exchange: exactly-once delivery, result recording, reconciliation at re-attach."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_status import rpc_status
from narset_testing import ServerThread, assert_refusal, attach_request, deploy

from narset.cli import main
from narset.client import NarsetClient
from narset.contract import reasons
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2, worker_service_pb2_grpc

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.backends

APPLIED = telemetry_pb2.COMMAND_OUTCOME_APPLIED


def report(attached, boundary: int, **fields) -> worker_service_pb2.ReportBoundaryRequest:
    return worker_service_pb2.ReportBoundaryRequest(
        job_id="run-7", session_id=attached.session_id, boundary=boundary, step=100 * boundary, **fields
    )


def result(command_id: str, boundary: int, outcome=APPLIED, message: str = "") -> telemetry_pb2.CommandResult:
    return telemetry_pb2.CommandResult(command_id=command_id, outcome=outcome, boundary=boundary, message=message)


def scaffold_report(stage, alpha: float, age: int) -> telemetry_pb2.ScaffoldReport:
    return telemetry_pb2.ScaffoldReport(
        scaffold_id="dep-1",
        module="encoder.fc1",
        blueprint="lora",
        stage=stage,
        alpha=alpha,
        age_ckpts=age,
        ttl_ckpts=12,
    )


def submit_deploy(client, command_id: str = "dep-1", module: str = "encoder.fc1"):
    return client.submit(deploy(module, command_id=command_id)).record


def test_pending_command_is_delivered_exactly_once(server, client, worker_stub, attached, capsys):
    """A PENDING command goes out at the next boundary, again only until its result arrives, never after."""
    submit_deploy(client)
    first = worker_stub.ReportBoundary(report(attached, 1))
    assert [c.command_id for c in first.commands] == ["dep-1"]
    assert first.commands[0].deploy.scaffold_id == "dep-1"
    assert client.list_commands("run-7")[0].state == command_pb2.COMMAND_STATE_DELIVERED
    # The response was lost and the job retries boundary 1: the command is sent again (the job dedups by id).
    retry = worker_stub.ReportBoundary(report(attached, 1))
    assert [c.command_id for c in retry.commands] == ["dep-1"]
    applied = report(attached, 2, results=[result("dep-1", 1)])
    applied.scaffolds.append(scaffold_report(telemetry_pb2.SCAFFOLD_STAGE_GRAFTING, 0.25, 1))
    assert list(worker_stub.ReportBoundary(applied).commands) == []
    assert list(worker_stub.ReportBoundary(applied).commands) == []  # same boundary again
    assert list(worker_stub.ReportBoundary(report(attached, 3)).commands) == []  # a later boundary
    [record] = client.list_commands("run-7")
    assert record.state == command_pb2.COMMAND_STATE_APPLIED
    assert (record.delivered_boundary, record.applied_boundary) == (1, 1)
    assert main(["commands", "run-7", "--server", server.address]) == 0
    out = capsys.readouterr().out
    assert "dep-1" in out and "APPLIED" in out
    [scaffold] = client.list_scaffolds("run-7")
    assert (scaffold.stage, scaffold.alpha) == (telemetry_pb2.SCAFFOLD_STAGE_GRAFTING, 0.25)
    assert [h.boundary for h in client.get_scaffold("run-7", "dep-1").history] == [2]


def test_rejected_deploy_frees_its_module(client, worker_stub, attached):
    """A deploy the job rejects ends REJECTED with the job's message, and its module can be deployed again."""
    submit_deploy(client)
    worker_stub.ReportBoundary(report(attached, 1))
    worker_stub.ReportBoundary(
        report(attached, 2, results=[result("dep-1", 1, telemetry_pb2.COMMAND_OUTCOME_REJECTED, "out of memory")])
    )
    [record] = client.list_commands("run-7")
    assert record.state == command_pb2.COMMAND_STATE_REJECTED
    assert record.result_message == "out of memory"
    assert client.list_scaffolds("run-7", include_ended=True) == []
    assert submit_deploy(client, "dep-2").state == command_pb2.COMMAND_STATE_PENDING


def two_held_scaffolds(client, worker_stub, attached, **policy_fields) -> None:
    """Scaffolds a (encoder.fc1) and b (decoder.fc1) deployed and HOLDing at boundary 2, under the job's
    policy with `policy_fields` changed."""
    policy = client.get_policy("run-7")
    for name, value in policy_fields.items():
        setattr(policy, name, value)
    client.set_policy("run-7", policy)
    submit_deploy(client, "a", "encoder.fc1")
    submit_deploy(client, "b", "decoder.fc1")
    worker_stub.ReportBoundary(report(attached, 1))
    live = report(attached, 2, results=[result("a", 1), result("b", 1)])
    for scaffold_id, module in (("a", "encoder.fc1"), ("b", "decoder.fc1")):
        live.scaffolds.append(
            telemetry_pb2.ScaffoldReport(
                scaffold_id=scaffold_id, module=module, stage=telemetry_pb2.SCAFFOLD_STAGE_HOLD, alpha=0.5, age_ckpts=1
            )
        )
    worker_stub.ReportBoundary(live)


def test_fold_budget_per_boundary_defers_the_rest(client, worker_stub, attached):
    """With max_folds_per_boundary=1, two folds go out at two successive boundaries, in ledger order."""
    two_held_scaffolds(client, worker_stub, attached, max_folds_per_boundary=1)
    for scaffold_id in ("a", "b"):
        client.submit(
            command_pb2.AdaptationCommand(
                job_id="run-7", fold={"scaffold": {"scaffold_id": scaffold_id}, "force": True}
            )
        )
    third = worker_stub.ReportBoundary(report(attached, 3))
    assert [c.fold.scaffold.scaffold_id for c in third.commands] == ["a"]
    fourth = worker_stub.ReportBoundary(report(attached, 4, results=[result(third.commands[0].command_id, 3)]))
    assert [c.fold.scaffold.scaffold_id for c in fourth.commands] == ["b"]


def test_reattach_reconciles_restored_state(client, worker_stub, attached):
    """Resume from a checkpoint without an applied command: it is redelivered; a lost result is recovered."""
    submit_deploy(client, "a", "encoder.fc1")
    worker_stub.ReportBoundary(report(attached, 1))
    worker_stub.ReportBoundary(report(attached, 2, results=[result("a", 1)]))
    submit_deploy(client, "b", "decoder.fc1")
    worker_stub.ReportBoundary(report(attached, 3))  # b delivered; the job applies and saves, then dies
    restored = worker_service_pb2.RestoredState(boundary=0, applied_command_ids=["b"])
    again = worker_stub.Attach(attach_request("run-7", restored=restored))
    assert list(again.redeliver_command_ids) == ["a"]
    assert again.next_boundary == 1
    states = {r.command.command_id: r.state for r in client.list_commands("run-7")}
    assert states == {"a": command_pb2.COMMAND_STATE_PENDING, "b": command_pb2.COMMAND_STATE_APPLIED}
    with pytest.raises(grpc.RpcError) as stale:
        worker_stub.ReportBoundary(report(attached, 4))
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stale.value.details().startswith("report.session_id:")
    assert_refusal(stale.value, grpc.StatusCode.FAILED_PRECONDITION, reasons.SESSION_SUPERSEDED, "report.session_id")
    resumed = worker_stub.ReportBoundary(
        worker_service_pb2.ReportBoundaryRequest(job_id="run-7", session_id=again.session_id, boundary=1, step=100)
    )
    assert [c.command_id for c in resumed.commands] == ["a"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"probe_loss": float("nan")}, "report.probe_loss"),
        ({"metrics": {"val_loss": float("inf")}}, "report.metrics[val_loss]"),
        ({"boundary": 0}, "report.boundary"),
        (
            {"scaffolds": [telemetry_pb2.ScaffoldReport(scaffold_id="x", alpha=float("nan"))]},
            "report.scaffolds[0].alpha",
        ),
        (
            {"scaffolds": [telemetry_pb2.ScaffoldReport(scaffold_id="x", gates={"foldability": float("nan")})]},
            "report.scaffolds[0].gates.foldability",
        ),
    ],
)
def test_bad_report_is_refused_and_changes_nothing(client, worker_stub, attached, fields, field):
    """NaN in a report or boundary 0: refused naming the field, nothing stored."""
    submit_deploy(client)
    before = (client.get_job("run-7").job.last_boundary, [r.state for r in client.list_commands("run-7")])
    base = {"job_id": "run-7", "session_id": attached.session_id, "boundary": 1, "step": 100}
    request = worker_service_pb2.ReportBoundaryRequest(**{**base, **fields})
    with pytest.raises(grpc.RpcError) as refused:
        worker_stub.ReportBoundary(request)
    assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert refused.value.details().startswith(field + ":"), refused.value.details()
    assert_refusal(refused.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_FIELD, field)
    assert (client.get_job("run-7").job.last_boundary, [r.state for r in client.list_commands("run-7")]) == before


def test_message_too_large_is_refused(worker_stub, server):
    """A request over the server's message limit gets RESOURCE_EXHAUSTED from gRPC itself (so no reason code)
    and attaches nothing."""
    request = attach_request("huge")
    request.modules.extend(job_pb2.ModuleInfo(name=f"m{i}", type="Linear" * 100) for i in range(20_000))
    assert request.ByteSize() > server.settings.max_message_bytes
    with pytest.raises(grpc.RpcError) as refused:
        worker_stub.Attach(request)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(refused.value) is None


def test_watch_receives_submitted_command(client, attached):
    """A following watch stream sees a COMMAND_SUBMITTED event when a command is submitted."""
    seen = threading.Event()
    received: list[job_pb2.Event] = []
    stream = client.watch("run-7", follow=True)

    def consume() -> None:
        for event in stream:
            received.append(event)
            if event.kind == job_pb2.EVENT_KIND_COMMAND_SUBMITTED:
                seen.set()
                return

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    submit_deploy(client)
    assert seen.wait(timeout=10)
    assert received[0].kind == job_pb2.EVENT_KIND_JOB_ATTACHED
    assert received[-1].attributes["command_id"] == "dep-1"
    stream.close()


def test_result_for_a_command_narset_never_issued_is_ignored(client, worker_stub, attached):
    """A job reporting the result of a locally submitted command is not refused; the ledger is unchanged."""
    submit_deploy(client)
    before = client.list_commands("run-7")
    response = worker_stub.ReportBoundary(report(attached, 1, results=[result("local-1", 1)]))
    assert [c.command_id for c in response.commands] == ["dep-1"]
    assert [r.command.command_id for r in client.list_commands("run-7")] == [r.command.command_id for r in before]


@pytest.fixture
def small_answers(db) -> Iterator[ServerThread]:
    """A server whose answers hold 8 KiB of commands (a 16 KiB message limit)."""
    running = ServerThread(db, max_message_bytes=16 * 1024).start()
    yield running
    running.stop()


def test_a_large_command_over_this_boundarys_budget_blocks_everything_after_it(small_answers):
    """A fold the per-boundary budget holds back takes no room in the answer: a deploy queued after it goes
    out at this boundary (the fold's size was checked first, and the answer counted as full)."""
    with grpc.insecure_channel(small_answers.address) as channel, NarsetClient(small_answers.address) as client:
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        attached = worker.Attach(attach_request("run-7"))
        limits = {"max_folds_per_boundary": 1, "max_live_scaffolds": 5, "max_scaffolds_per_region": 3}
        two_held_scaffolds(client, worker, attached, **limits)
        # 3 KB, 3 KB, then a 3.9 KB fold over the budget, which would not fit the 2 KB left, then a small deploy.
        large = deploy("encoder.fc2", command_id="c")
        large.reason = "r" * 3000
        client.submit(large)
        for scaffold_id, reason in (("a", "r" * 3000), ("b", "r" * 3900)):
            fold = command_pb2.AdaptationCommand(job_id="run-7", command_id=f"fold-{scaffold_id}", reason=reason)
            fold.fold.scaffold.scaffold_id, fold.fold.force = scaffold_id, True
            client.submit(fold)
        client.submit(deploy("decoder.fc2", command_id="d"))
        answer = worker.ReportBoundary(report(attached, 3))
        assert [c.command_id for c in answer.commands] == ["c", "fold-a", "d"]
        states = {r.command.command_id: r.state for r in client.list_commands("run-7")}
        assert states["fold-b"] == command_pb2.COMMAND_STATE_PENDING
        assert states["d"] == command_pb2.COMMAND_STATE_DELIVERED
