"""Numbers in their documented ranges, not only finite (issue 12): out-of-range report telemetry, registrations,
blueprint parameter ranges and a policy's deploy settings are refused naming the field, and change nothing."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool
from narset_testing import assert_refusal, attach_request, stored_blueprints

from kasmina_worker.link.narset_transport import NarsetTransport
from narset.contract import reasons
from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.contract.limits import MAX_BOUNDARY, RANGES, fit_to_ranges, limit_error, range_error
from narset.contract.rules import blueprint_spec_errors
from narset.v1 import job_pb2, operator_service_pb2, telemetry_pb2, worker_service_pb2

S = telemetry_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    return error.value


def _scaffold(**fields) -> S.ScaffoldReport:
    gates = fields.pop("gates", {})
    report = S.ScaffoldReport(scaffold_id="sc", module="encoder.fc1", stage=S.SCAFFOLD_STAGE_HOLD, alpha=0.5)
    report.MergeFrom(S.ScaffoldReport(gates=S.GateTelemetry(**gates), **fields))
    return report


REPORTS = {
    "alpha above 1": ({"scaffolds": [_scaffold(alpha=1.5)]}, "report.scaffolds[0].alpha", "in [0, 1], got 1.5"),
    "alpha below 0": ({"scaffolds": [_scaffold(alpha=-0.1)]}, "report.scaffolds[0].alpha", "in [0, 1], got -0.1"),
    "negative drift": ({"scaffolds": [_scaffold(gates={"drift": -0.2})]}, "report.scaffolds[0].gates.drift", ">= 0"),
    "negative jitter": (
        {"scaffolds": [_scaffold(gates={"jitter_p95": -1.0})]},
        "report.scaffolds[0].gates.jitter_p95",
        ">= 0",
    ),
    "negative step-time ratio": (
        {"scaffolds": [_scaffold(gates={"step_time_ratio": -1.0})]},
        "report.scaffolds[0].gates.step_time_ratio",
        ">= 0",
    ),
    "negative age": ({"scaffolds": [_scaffold(age_ckpts=-1)]}, "report.scaffolds[0].age_ckpts", ">= 0, got -1"),
    "negative step time": ({"step_time_ms": -3.0}, "report.step_time_ms", ">= 0, got -3"),
    "negative update ratio": (
        {"region_signals": [S.RegionSignal(region="encoder", update_ratio=-1e-3)]},
        "report.region_signals[0].update_ratio",
        ">= 0",
    ),
    "result before boundary 0": (
        {"results": [S.CommandResult(command_id="x", outcome=S.COMMAND_OUTCOME_APPLIED, boundary=-1)]},
        "report.results[0].boundary",
        f"in [0, {MAX_BOUNDARY}], got -1",
    ),
}


@pytest.mark.parametrize(("fields", "field", "why"), REPORTS.values(), ids=REPORTS.keys())
def test_a_report_out_of_range_is_refused_and_stores_nothing(client, worker_stub, attached, fields, field, why):
    request = worker_service_pb2.ReportBoundaryRequest(
        job_id="run-7", session_id=attached.session_id, boundary=1, step=1, **fields
    )
    error = _refused(worker_stub.ReportBoundary, request)
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, field)
    assert f"must be {why}" in error.details()
    assert client.get_job("run-7").job.last_boundary == 0


def _param(**fields) -> job_pb2.BlueprintParam:
    return job_pb2.BlueprintParam(
        **({"name": "rank", "min": 1, "max": 8, "default_value": 4, "integer": True} | fields)
    )


def _with_blueprint(*params: job_pb2.BlueprintParam) -> worker_service_pb2.AttachRequest:
    request = attach_request("run-9")
    request.blueprints.add(name="mine", host_types=["Linear"], params=params)
    return request


def _with_rank(rank: int) -> worker_service_pb2.AttachRequest:
    request = attach_request("run-9")
    request.ranks[0].rank = rank
    return request


def _with_shape(size: int) -> worker_service_pb2.AttachRequest:
    request = attach_request("run-9")
    request.modules[0].parameters[0].shape[0] = size
    return request


ATTACHES = {
    "min above max": (_with_blueprint(_param(min=8, max=2)), "attach.blueprints[0].params[0].min", "<= max 2, got 8"),
    "default outside": (
        _with_blueprint(_param(default_value=40)),
        "attach.blueprints[0].params[0].default_value",
        "in [1, 8], got 40",
    ),
    "fractional integer": (
        _with_blueprint(_param(default_value=2.5)),
        "attach.blueprints[0].params[0].default_value",
        "an integer",
    ),
    "a parameter twice": (
        _with_blueprint(_param(), _param()),
        "attach.blueprints[0].params[1].name",
        "a new parameter name",
    ),
    "negative rank": (_with_rank(-1), "attach.ranks[0].rank", ">= 0, got -1"),
    "negative shape": (_with_shape(-4), "attach.modules[0].parameters[0].shape[0]", ">= 0, got -4"),
}


@pytest.mark.parametrize(("request_", "field", "why"), ATTACHES.values(), ids=ATTACHES.keys())
def test_a_registration_out_of_range_is_refused_and_stores_nothing(client, worker_stub, db_path, request_, field, why):
    error = _refused(worker_stub.Attach, request_)
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, field)
    assert f"must be {why}" in error.details()
    assert client.list_jobs() == []
    assert not stored_blueprints(db_path, "mine")


def _auto_ttl(policy: job_pb2.JobPolicy) -> None:
    policy.auto.scaffold_policy.ttl_ckpts = -5


def _auto_rank(policy: job_pb2.JobPolicy) -> None:
    policy.auto.blueprint_params["rank"] = -3


def _site_rank(policy: job_pb2.JobPolicy) -> None:
    policy.auto.warm_start.sites.add(region="encoder", blueprint="lora").blueprint_params["rank"] = 2.5


def _site_floor(policy: job_pb2.JobPolicy) -> None:
    policy.auto.warm_start.sites.add(region="encoder", blueprint="lora").scaffold_policy.schedule.floor = 2.0


POLICIES = {
    "auto ttl": (_auto_ttl, "policy.auto.scaffold_policy.ttl_ckpts", ">= 1, got -5"),
    "auto rank": (_auto_rank, "policy.auto.blueprint_params.rank", "in [1, 4096], got -3"),
    "warm-start rank": (_site_rank, "policy.auto.warm_start.sites[0].blueprint_params.rank", "an integer"),
    "warm-start floor": (_site_floor, "policy.auto.warm_start.sites[0].scaffold_policy.schedule.floor", "in [0, 1]"),
}


@pytest.mark.parametrize(("change", "field", "why"), POLICIES.values(), ids=POLICIES.keys())
def test_set_policy_holds_the_deploy_settings_to_a_deploys_rules(client, operator_stub, attached, change, field, why):
    """A policy whose triggers would deploy with out-of-range settings is refused now, not at the trigger."""
    before = client.get_policy("run-7")
    policy = job_pb2.JobPolicy()
    policy.CopyFrom(before)
    change(policy)
    error = _refused(operator_stub.SetPolicy, operator_service_pb2.SetPolicyRequest(job_id="run-7", policy=policy))
    assert_refusal(error, INVALID, reasons.INVALID_FIELD, field)
    assert f"must be {why}" in error.details()
    assert client.get_policy("run-7") == before


def test_ranges_name_real_fields_and_the_builtin_blueprints_keep_the_rules():
    """Every RANGES key is a numeric field of the contract, and no built-in blueprint breaks its own ranges."""
    pool = descriptor_pool.Default()
    for name in RANGES:
        message, _, field = name.rpartition(".")
        descriptor = pool.FindMessageTypeByName(message).fields_by_name[field]
        assert descriptor.cpp_type in (descriptor.CPPTYPE_INT32, descriptor.CPPTYPE_INT64, descriptor.CPPTYPE_DOUBLE)
    assert [blueprint_spec_errors(b) for b in BUILTIN_BLUEPRINTS] == [[]] * len(BUILTIN_BLUEPRINTS)
    assert range_error("x", 0.0, 0.0, 1.0) is None and range_error("x", 1.0, 0.0, 1.0) is None
    assert str(range_error("x", 2, None, 1)) == "x: must be <= 1, got 2"


def test_the_worker_fits_its_report_to_the_ranges_narset_checks(client, worker_stub, attached):
    """The worker's link fits its report by the table Narset checks: a rounding slip is clamped, an
    out-of-range measurement cleared (unmeasured), in-range values kept, and Narset accepts the result."""
    report = worker_service_pb2.ReportBoundaryRequest(
        job_id="run-7",
        session_id=attached.session_id,
        boundary=1,
        step=1,
        step_time_ms=-1.0,
        scaffolds=[_scaffold(alpha=-1e-9, gates={"drift": -0.2, "jitter_p95": 0.01})],
    )
    assert limit_error(report) is not None
    fitted = fit_to_ranges(report)
    assert sorted(fitted) == ["scaffolds[0].alpha", "scaffolds[0].gates.drift", "step_time_ms"]
    assert limit_error(report) is None and fit_to_ranges(report) == []
    [scaffold] = report.scaffolds
    assert (scaffold.alpha, scaffold.gates.HasField("drift"), scaffold.gates.jitter_p95) == (0.0, False, 0.01)
    assert not report.HasField("step_time_ms")
    worker_stub.ReportBoundary(report)
    assert client.get_job("run-7").job.last_boundary == 1


def test_the_worker_link_fits_its_registration_too(server, client):
    """A restored scaffold whose alpha slipped below 0 would have its job's every attach refused: the
    link clamps it, and the job attaches."""
    registration = attach_request("run-7")
    registration.restored.boundary = 1
    registration.restored.scaffolds.append(_scaffold(alpha=-1e-9))
    transport = NarsetTransport(server.address, lambda: registration, timeout_s=5)
    try:
        transport.exchange(worker_service_pb2.ReportBoundaryRequest(job_id="run-7", boundary=2, step=2))
        assert transport.last_error is None
    finally:
        transport.close()
    assert client.get_job("run-7").job.last_boundary == 2
