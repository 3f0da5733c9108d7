"""Hostile and odd input against a real server: every kind is refused by name or handled, never UNKNOWN,
and a refused request stores nothing (docs/design.md, section 7; issue 12)."""

from __future__ import annotations

import time

import grpc
import pytest
import structlog
from narset_testing import assert_refusal, attach_request, deploy, stored_blueprints

from narset.client import NarsetError
from narset.contract import reasons
from narset.contract.limits import BASE_ID_MAX, ID_MAX, MAX_BOUNDARY, MAX_ITEMS, derived_id
from narset.contract.stages import stage_name
from narset.server.guard import INTERNAL_MESSAGE, SERVICES
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, operator_service_pb2, telemetry_pb2, worker_service_pb2

S = telemetry_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Job:
    """A job's rank 0 speaking the worker protocol by hand: one report per call, results sent back next time."""

    def __init__(self, stub, job_id: str = "run-7") -> None:
        self.stub, self.job_id = stub, job_id
        self.session = stub.Attach(attach_request(job_id)).session_id
        self.results: list[S.CommandResult] = []

    def request(self, boundary: int, *scaffolds: S.ScaffoldReport) -> worker_service_pb2.ReportBoundaryRequest:
        return worker_service_pb2.ReportBoundaryRequest(
            job_id=self.job_id, session_id=self.session, boundary=boundary, step=boundary, scaffolds=scaffolds
        )

    def report(self, boundary: int, *scaffolds: S.ScaffoldReport) -> list[str]:
        """Report `boundary`; returns the ids of the commands due, which the job applies at once."""
        request = self.request(boundary, *scaffolds)
        request.results.extend(self.results)
        commands = self.stub.ReportBoundary(request).commands
        self.results = [
            S.CommandResult(command_id=c.command_id, outcome=S.COMMAND_OUTCOME_APPLIED, boundary=boundary)
            for c in commands
        ]
        return [c.command_id for c in commands]


def scaffold(scaffold_id: str, stage=S.SCAFFOLD_STAGE_HOLD, **gates) -> S.ScaffoldReport:
    return S.ScaffoldReport(
        scaffold_id=scaffold_id,
        module="encoder.fc1",
        stage=stage,
        alpha=0.5,
        age_ckpts=1,
        ttl_ckpts=12,
        gates=S.GateTelemetry(**gates),
    )


def deployed(job: Job, client, scaffold_id: str = "sc", boundary: int = 1) -> None:
    """Deploy `scaffold_id` on encoder.fc1, deliver it at `boundary` and report it applied at the next one."""
    client.submit(deploy("encoder.fc1", job=job.job_id, command_id=scaffold_id))
    assert job.report(boundary) == [scaffold_id]
    job.report(boundary + 1, scaffold(scaffold_id))


def refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    return error.value


# command ids ----------------------------------------------------------------------------------------


def test_command_ids_are_scoped_per_job(client, worker_stub):
    """A submit for job B reusing job A's command id is a new command of B, not A's record."""
    worker_stub.Attach(attach_request("run-7"))
    worker_stub.Attach(attach_request("run-8"))
    first = client.submit(deploy("encoder.fc1", job="run-7", command_id="dep-1"))
    second = client.submit(deploy("encoder.fc2", job="run-8", command_id="dep-1"))
    assert not second.duplicate
    assert (second.record.command.job_id, second.record.command.deploy.module) == ("run-8", "encoder.fc2")
    assert client.submit(deploy("encoder.fc1", job="run-7", command_id="dep-1")).record == first.record
    assert [r.command.job_id for r in client.list_commands("run-8")] == ["run-8"]


def test_another_jobs_decision_does_not_take_a_jobs_decision_id(client, worker_stub):
    """Two jobs with a scaffold of the same id tripping at the same boundary each get their own prune."""
    victim, other = Job(worker_stub, "run-7"), Job(worker_stub, "run-8")
    deployed(other, client)
    deployed(victim, client)
    assert other.report(3, scaffold("sc", non_finite=True)) == ["sc.prune.b3"]
    assert victim.report(3, scaffold("sc", non_finite=True)) == ["sc.prune.b3"]
    [prune] = [r for r in client.list_commands("run-7") if r.command.command_id == "sc.prune.b3"]
    assert (prune.command.job_id, prune.command.issued_by) == ("run-7", "narset:gates")
    assert [d.command_id for d in client.list_decisions("run-7")] == ["sc.prune.b3"]


@pytest.mark.parametrize("command_id", ["sc.prune.b3", "sc.fuse.b12", "x.breaker.b1", "auto.run-7.b4"])
def test_a_client_cannot_submit_an_id_of_the_form_narset_derives(operator_stub, attached, command_id):
    """A pre-submitted `<scaffold>.prune.b<N>` could stand in for a later decision: refused, nothing stored."""
    request = operator_service_pb2.SubmitCommandRequest(command=deploy("encoder.fc1", command_id=command_id))
    error = refused(operator_stub.SubmitCommand, request)
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "command.command_id")
    assert "derives" in error.details()
    assert not operator_stub.ListCommands(operator_service_pb2.ListCommandsRequest(job_id="run-7")).commands


# derived ids and boundaries ---------------------------------------------------------------------------


def test_ids_narset_derives_never_exceed_the_id_limit(client, worker_stub):
    """A 128-character scaffold id at its end of life: the prune's id is cut and hashed to fit, and the job
    reports on (it was blocked for good); job ids are held to 96 characters, for the ids built from them."""
    long_job = refused(worker_stub.Attach, attach_request("j" * (BASE_ID_MAX + 1)))
    assert_refusal(long_job, INVALID, reasons.INVALID_FIELD, "attach.job_id")
    job = Job(worker_stub)
    longest, twin = "s" * ID_MAX, "s" * (ID_MAX - 1) + "t"
    deployed(job, client, scaffold_id=longest)
    client.submit(deploy("decoder.fc1", command_id=twin))
    assert job.report(3) == [twin]
    [prune, twin_prune] = job.report(MAX_BOUNDARY, scaffold(longest, non_finite=True), scaffold(twin, non_finite=True))
    assert prune == derived_id(longest, f".prune.b{MAX_BOUNDARY}") and len(prune) == ID_MAX
    assert prune.endswith(f".prune.b{MAX_BOUNDARY}") and twin_prune != prune
    assert job.report(MAX_BOUNDARY) == []  # the job reports on: nothing blocks it at the end of life


def test_boundaries_beyond_the_int64_safe_range_are_refused_and_change_nothing(client, worker_stub):
    """An attach restoring boundary 2^63-1 (or -1) is refused before any write; so is a report past 2^53-1."""
    for boundary in (2**63 - 1, MAX_BOUNDARY + 1, -1):
        restored = worker_service_pb2.RestoredState(boundary=boundary)
        error = refused(worker_stub.Attach, attach_request("run-9", restored=restored))
        assert_refusal(error, INVALID, reasons.INVALID_FIELD, "attach.restored.boundary")
    assert client.list_jobs() == []
    job = Job(worker_stub)
    job.report(5)
    session = job.session
    error = refused(worker_stub.Attach, attach_request(restored=worker_service_pb2.RestoredState(boundary=2**63 - 1)))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "attach.restored.boundary")
    error = refused(worker_stub.ReportBoundary, job.request(MAX_BOUNDARY + 1))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "report.boundary")
    assert client.get_job("run-7").job.last_boundary == 5
    assert job.report(6) == [] and job.session == session  # the first session is still the job's


def test_embargo_saturates_at_huge_boundaries_and_lengths(client, worker_stub):
    """A breaker prune at the last boundary, with the longest embargo a policy allows, saturates; never UNKNOWN."""
    job = Job(worker_stub)
    policy = client.get_policy("run-7")
    policy.embargo_ckpts = 2**31 - 1
    client.set_policy("run-7", policy)
    deployed(job, client)
    job.report(MAX_BOUNDARY, scaffold("sc", S.SCAFFOLD_STAGE_PRUNED, non_finite=True))
    [embargo] = client.get_job("run-7").embargoes
    assert (embargo.region, embargo.until_boundary, embargo.failures) == ("encoder", MAX_BOUNDARY + 1, 1)
    [decision] = client.list_decisions("run-7")
    assert decision.decision_id == f"sc.breaker.b{MAX_BOUNDARY}"


# unknown enums, repeated scaffolds, non-finite numbers ------------------------------------------------


def _report_stage_99(job: Job) -> worker_service_pb2.ReportBoundaryRequest:
    return job.request(1, scaffold("sc", stage=99))


def _report_outcome_99(job: Job) -> worker_service_pb2.ReportBoundaryRequest:
    request = job.request(1)
    request.results.add(command_id="sc", outcome=99, boundary=1)
    return request


def _report_nan_signal(job: Job) -> worker_service_pb2.ReportBoundaryRequest:
    request = job.request(1)
    request.region_signals.add(region="encoder", update_ratio=float("nan"))
    return request


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (_report_stage_99, "report.scaffolds[0].stage"),
        (_report_outcome_99, "report.results[0].outcome"),
        (_report_nan_signal, "report.region_signals[0].update_ratio"),
        (lambda job: job.request(1, scaffold("sc"), scaffold("sc")), "report.scaffolds[1].scaffold_id"),
    ],
    ids=["stage 99", "outcome 99", "NaN region signal", "same scaffold twice"],
)
def test_a_bad_report_is_refused_naming_the_field_and_stores_nothing(client, worker_stub, build, field):
    job = Job(worker_stub)
    client.submit(deploy("encoder.fc1", command_id="sc"))
    error = refused(worker_stub.ReportBoundary, build(job))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, field)
    assert client.get_job("run-7").job.last_boundary == 0
    [record] = client.list_commands("run-7")
    assert record.state == command_pb2.COMMAND_STATE_PENDING
    [pending] = client.list_scaffolds("run-7", include_ended=True)
    assert pending.stage == S.SCAFFOLD_STAGE_PENDING
    assert client.list_decisions("run-7") == []


def test_the_same_scaffold_pruned_twice_in_one_report_is_refused(client, worker_stub):
    """Twice PRUNED with a breaker flag in one report: refused by name, no decision, no embargo (was UNKNOWN)."""
    job = Job(worker_stub)
    deployed(job, client)
    pruned = scaffold("sc", S.SCAFFOLD_STAGE_PRUNED, non_finite=True)
    error = refused(worker_stub.ReportBoundary, job.request(3, pruned, pruned))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "report.scaffolds[1].scaffold_id")
    assert client.list_decisions("run-7") == [] and not client.get_job("run-7").embargoes


def test_unknown_enums_in_commands_and_registrations_are_refused(client, operator_stub, worker_stub, db_path):
    """exit_policy 99 in a deploy and size_class / fold kind 99 in a job's blueprint are refused by name."""
    Job(worker_stub)
    command = deploy("encoder.fc1", policy=command_pb2.ScaffoldPolicy(exit_policy=99))
    error = refused(operator_stub.SubmitCommand, operator_service_pb2.SubmitCommandRequest(command=command))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "deploy.policy.exit_policy")
    assert client.list_commands("run-7") == []
    for field, blueprint in (
        ("size_class", job_pb2.Blueprint(name="mine", host_types=["Linear"], size_class=99)),
        ("folds[0]", job_pb2.Blueprint(name="mine", host_types=["Linear"], folds=[99])),
    ):
        request = attach_request("run-9")
        request.blueprints.append(blueprint)
        error = refused(worker_stub.Attach, request)
        assert_refusal(error, INVALID, reasons.INVALID_FIELD, f"attach.blueprints[0].{field}")
    assert [j.job_id for j in client.list_jobs()] == ["run-7"]
    assert not stored_blueprints(db_path, "mine")


def test_stage_name_of_a_value_stored_before_reports_were_checked():
    assert (stage_name(S.SCAFFOLD_STAGE_HOLD), stage_name(99)) == ("HOLD", "UNKNOWN(99)")


# repeated fields, undecodable bytes, internal errors, echoed values --------------------------------------


def test_list_commands_refuses_a_huge_states_list_at_once(operator_stub, attached):
    """4 million states stalled the server for seconds; over MAX_ITEMS entries is refused without a walk."""
    huge = operator_service_pb2.ListCommandsRequest(job_id="run-7", states=[1] * 1_000_000)
    started = time.monotonic()
    error = refused(operator_stub.ListCommands, huge)
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "states")
    assert f"at most {MAX_ITEMS}" in error.details() and time.monotonic() - started < 2.0
    unknown = operator_service_pb2.ListCommandsRequest(job_id="run-7", states=[1, 99])
    assert_refusal(refused(operator_stub.ListCommands, unknown), INVALID, reasons.INVALID_FIELD, "states[1]")
    repeated = operator_service_pb2.ListCommandsRequest(job_id="run-7", states=[1, 1, 2] * 100)
    assert list(operator_stub.ListCommands(repeated).commands) == []


@pytest.mark.parametrize(
    "method", [f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods], ids=lambda m: m.rpartition("/")[2]
)
def test_undecodable_requests_are_invalid_argument(server, method):
    """Bytes that are no request message: INVALID_ARGUMENT with reason MALFORMED_REQUEST (was UNKNOWN)."""
    garbage = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow
    with grpc.insecure_channel(server.address) as channel:
        streaming = method.endswith("/WatchEvents")
        call = (channel.unary_stream if streaming else channel.unary_unary)(method)
        with pytest.raises(grpc.RpcError) as error:
            list(call(garbage, timeout=10)) if streaming else call(garbage, timeout=10)
    assert_refusal(error.value, INVALID, reasons.MALFORMED_REQUEST, "request")


def test_an_internal_error_is_internal_generic_and_logged_with_its_traceback(client, monkeypatch):
    def broken(self):
        raise RuntimeError("disk on fire: /secret/path")

    monkeypatch.setattr(Store, "list_jobs", broken)
    with structlog.testing.capture_logs() as logs, pytest.raises(NarsetError) as error:
        client.list_jobs()
    internal = (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "")
    assert (error.value.code, error.value.details, error.value.reason) == internal
    [failed] = [entry for entry in logs if entry["event"] == "request.failed"]
    assert (failed["rpc"], failed["log_level"], failed["exc_info"]) == ("ListJobs", "error", True)


def test_refused_values_are_cut_in_messages_and_logs(operator_stub, worker_stub, attached):
    """A refused value is echoed cut to 200 characters; a value over the string limit is not echoed at all."""
    long_module = deploy("m" * 4000)
    request = operator_service_pb2.SubmitCommandRequest(command=long_module)
    with structlog.testing.capture_logs() as logs:
        error = refused(operator_stub.SubmitCommand, request)
    assert_refusal(error, grpc.StatusCode.NOT_FOUND, reasons.MODULE_NOT_FOUND, "deploy.module")
    assert len(error.details()) < 1100 and "(" in error.details()
    [logged] = [entry for entry in logs if entry["event"] == "request.refused"]
    assert len(logged["message"]) < 1100
    bad_id = deploy("encoder.fc1", command_id="!" * 3000)
    error = refused(operator_stub.SubmitCommand, operator_service_pb2.SubmitCommandRequest(command=bad_id))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "command.command_id")
    assert "(3000 characters)" in error.details() and len(error.details()) < 500
    megabyte = attach_request("run-9")
    megabyte.ranks[0].hostname = "h" * 1_000_000
    error = refused(worker_stub.Attach, megabyte)
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, "attach.ranks[0].hostname")
    assert len(error.details()) < 200
