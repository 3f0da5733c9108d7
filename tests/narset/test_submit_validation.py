"""Submit-time validation: each refusal has its status code, names its field, and changes nothing."""

from __future__ import annotations

import grpc
import pytest
from narset_testing import assert_refusal, attach_request, deploy

from narset.cli import main
from narset.client import NarsetError
from narset.contract import reasons
from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.contract.rules import blueprint_fit_errors
from narset.store import open_store
from narset.v1 import command_pb2, job_pb2, operator_service_pb2, worker_service_pb2

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.backends


def ledger_snapshot(client, job: str = "run-7") -> tuple:
    return (
        [r.SerializeToString() for r in client.list_commands(job)],
        [s.SerializeToString() for s in client.list_scaffolds(job, include_ended=True)],
        [e.sequence for e in client.watch(job, follow=False)],
    )


def policy(**fields) -> command_pb2.ScaffoldPolicy:
    schedule = {k: fields.pop(k) for k in list(fields) if k in command_pb2.AlphaSchedule.DESCRIPTOR.fields_by_name}
    return command_pb2.ScaffoldPolicy(schedule=command_pb2.AlphaSchedule(**schedule), **fields)


REFUSALS = {
    "unknown job": (
        deploy("encoder.fc1", job="nope"),
        grpc.StatusCode.NOT_FOUND,
        reasons.JOB_NOT_FOUND,
        "command.job_id",
    ),
    "no action": (
        command_pb2.AdaptationCommand(job_id="run-7"),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "command.action",
    ),
    "bad command id": (
        command_pb2.AdaptationCommand(command_id="has space", job_id="run-7", deploy={"module": "encoder.fc1"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "command.command_id",
    ),
    "unknown module": (deploy("encoder.fc9"), grpc.StatusCode.NOT_FOUND, reasons.MODULE_NOT_FOUND, "deploy.module"),
    "unknown blueprint": (
        deploy("encoder.fc1", "hypernet"),
        grpc.StatusCode.NOT_FOUND,
        reasons.BLUEPRINT_NOT_FOUND,
        "deploy.blueprint",
    ),
    "blueprint wrong host type": (
        deploy("h.0.attn.c_attn", "dense_delta"),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint",
    ),
    "blueprint needs moe trait": (
        deploy("encoder.fc1", "moe_expert"),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint",
    ),
    "host without feature sizes": (
        deploy("encoder.act", "residual_mlp"),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.module",
    ),
    "lora rank above the parameter maximum": (
        deploy("decoder.proj", params={"rank": 4097}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint_params.rank",
    ),
    "dense_delta bias on a host without bias": (
        deploy("decoder.no_bias", "dense_delta", params={"bias": 1}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint_params.bias",
    ),
    "unknown blueprint parameter": (
        deploy("encoder.fc1", params={"depth": 2}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint_params.depth",
    ),
    "fractional rank": (
        deploy("encoder.fc1", params={"rank": 2.5}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint_params.rank",
    ),
    "negative ttl": (
        deploy("encoder.fc1", policy=policy(ttl_ckpts=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.policy.ttl_ckpts",
    ),
    "warm level above 1": (
        deploy("encoder.fc1", policy=policy(warm_level=1.5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.policy.schedule.warm_level",
    ),
    "negative floor": (
        deploy("encoder.fc1", policy=policy(floor=-0.1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.policy.schedule.floor",
    ),
    "negative warmup": (
        deploy("encoder.fc1", policy=policy(warmup_ckpts=-2)),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.policy.schedule.warmup_ckpts",
    ),
    "schedule longer than ttl": (
        deploy("encoder.fc1", policy=policy(ttl_ckpts=6, warmup_ckpts=2, hold_ckpts=3, decay_ckpts=7)),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.policy.ttl_ckpts",
    ),
    "kd temperature zero": (
        deploy("encoder.fc1", policy=command_pb2.ScaffoldPolicy(teaching={"kd": {"weight": 1.0, "tau": 0.0}})),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.policy.teaching.kd.tau",
    ),
    "nan learning rate": (
        deploy("encoder.fc1", learning_rate=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.learning_rate",
    ),
    "unknown region": (
        deploy("encoder.fc1", region="middle"),
        grpc.StatusCode.NOT_FOUND,
        reasons.REGION_NOT_FOUND,
        "deploy.region",
    ),
    "module outside the named region": (
        deploy("encoder.fc1", region="decoder"),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "deploy.region",
    ),
    "protected region": (
        deploy("head", params={"rank": 2}),
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.REGION_PROTECTED,
        "deploy.region",
    ),
    "fold of an unknown scaffold": (
        command_pb2.AdaptationCommand(job_id="run-7", fold={"scaffold": {"scaffold_id": "ghost"}}),
        grpc.StatusCode.NOT_FOUND,
        reasons.SCAFFOLD_NOT_FOUND,
        "fold.scaffold.scaffold_id",
    ),
    "prune on a module without scaffold": (
        command_pb2.AdaptationCommand(job_id="run-7", prune={"scaffold": {"module": "encoder.fc2"}}),
        grpc.StatusCode.NOT_FOUND,
        reasons.SCAFFOLD_NOT_FOUND,
        "prune.scaffold.module",
    ),
    "persist without a target": (
        command_pb2.AdaptationCommand(job_id="run-7", persist={}),
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_FIELD,
        "persist.scaffold",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_names_field_and_changes_nothing(client, operator_stub, attached, case):
    """Each malformed or impossible command is refused with its status and reason code, naming the field
    (in the message, the ErrorInfo and a FieldViolation); the client exposes reason and field."""
    command, code, reason, field = REFUSALS[case]
    before = ledger_snapshot(client)
    with pytest.raises(NarsetError) as refused:
        client.submit(command)
    assert refused.value.code == code, refused.value.details
    assert refused.value.details.startswith(field + ":"), refused.value.details
    assert (refused.value.reason, refused.value.field) == (reason, field)
    with pytest.raises(grpc.RpcError) as raw:
        operator_stub.SubmitCommand(operator_service_pb2.SubmitCommandRequest(command=command))
    assert_refusal(raw.value, code, reason, field)
    assert ledger_snapshot(client) == before


def conv(name: str, channels: tuple[int, int], kernel: int = 3, groups: int = 1, bias: bool = True):
    """A Conv2d (stride 1, padded to its centre) as a worker describes it (kasmina_worker.seeds.hosts.module_info)."""
    in_channels, out_channels = channels
    parameters = [job_pb2.ParameterInfo(name="weight", shape=[out_channels, in_channels // groups, kernel, kernel])]
    if bias:
        parameters.append(job_pb2.ParameterInfo(name="bias", shape=[out_channels]))
    geometry = job_pb2.ConvInfo(
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[kernel, kernel],
        stride=[1, 1],
        padding=[(kernel - 1) // 2] * 2,
        dilation=[1, 1],
        groups=groups,
        padding_mode="zeros",
    )
    return job_pb2.ModuleInfo(name=name, type="Conv2d", parameters=parameters, conv=geometry)


CONV_MODULES = [
    conv("grouped", (8, 8), groups=4),
    conv("even", (8, 8), kernel=2),
    conv("widening", (8, 16)),
    conv("no_bias", (8, 8), bias=False),
    job_pb2.ModuleInfo(name="same_even", type="Conv2d"),  # padding "same" on a 4x4 kernel: no geometry
    job_pb2.ModuleInfo(name="broken", type="Conv2d", conv=job_pb2.ConvInfo(in_channels=8, out_channels=8, groups=3)),
]
CONV_REFUSALS = {
    "lora rank not a multiple of the conv groups": ("grouped", "lora", {"rank": 6}, "deploy.blueprint_params.rank"),
    "conv_branch on an even kernel": ("even", "conv_branch", {}, "deploy.module"),
    "identity branch that changes the channels": (
        "widening",
        "conv_branch",
        {"identity": 1},
        "deploy.blueprint_params.identity",
    ),
    "branch BatchNorm on a host without bias": ("no_bias", "conv_branch", {}, "deploy.blueprint_params.bn"),
    "conv_branch without a branch": ("grouped", "conv_branch", {"branch_1x1": 0}, "deploy.blueprint_params.branch_1x1"),
    "conv host without a geometry": ("same_even", "lora", {}, "deploy.module"),
    "conv geometry that is not a Conv2d's": ("broken", "expand", {}, "deploy.module"),
    "dense_delta on a conv": ("grouped", "dense_delta", {}, "deploy.blueprint"),
}


@pytest.fixture
def conv_job(worker_stub) -> worker_service_pb2.AttachResponse:
    """Job conv-7 attached with the standard registration plus the Conv2d hosts of CONV_MODULES."""
    request = attach_request("conv-7")
    request.modules.extend(CONV_MODULES)
    return worker_stub.Attach(request)


@pytest.mark.parametrize("case", sorted(CONV_REFUSALS))
def test_conv_refusal_is_the_rule_the_worker_applies(client, conv_job, case):
    """A conv deploy that cannot be built or folded exactly is refused as BLUEPRINT_DOES_NOT_FIT naming the field,
    with the message of `blueprint_fit_errors`, the function the worker applies; nothing changes."""
    module, blueprint, params, field = CONV_REFUSALS[case]
    before = ledger_snapshot(client, "conv-7")
    with pytest.raises(NarsetError) as refused:
        client.submit(deploy(module, blueprint, job="conv-7", params=params))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.reason, refused.value.field) == (reasons.BLUEPRINT_DOES_NOT_FIT, field)
    [info] = [m for m in CONV_MODULES if m.name == module]
    [catalogued] = [b for b in BUILTIN_BLUEPRINTS if b.name == blueprint]
    assert refused.value.details == "; ".join(str(error) for error in blueprint_fit_errors(catalogued, info, params))
    assert ledger_snapshot(client, "conv-7") == before


def test_conv_deploys_that_fold_exactly_are_accepted(client, conv_job):
    """lora with a rank above the channels (a multiple of the groups), conv_branch with an identity and expand are
    accepted on the Conv2d hosts they fit."""
    accepted = [
        deploy("grouped", job="conv-7", params={"rank": 16}),
        deploy("no_bias", "conv_branch", job="conv-7", params={"identity": 1, "bn": 0}),
        deploy("widening", "expand", job="conv-7"),
    ]
    for command in accepted:
        assert client.submit(command).record.state == command_pb2.COMMAND_STATE_PENDING


def test_refusal_lists_every_bad_field(operator_stub, attached):
    """A command with several bad fields is refused naming the first; BadRequest lists them all."""
    command = deploy("encoder.fc1", policy=policy(ttl_ckpts=-1, warm_level=1.5))
    with pytest.raises(grpc.RpcError) as refused:
        operator_stub.SubmitCommand(operator_service_pb2.SubmitCommandRequest(command=command))
    violations = assert_refusal(
        refused.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_FIELD, "deploy.policy.ttl_ckpts"
    )
    assert [v.field for v in violations] == ["deploy.policy.ttl_ckpts", "deploy.policy.schedule.warm_level"]
    assert "deploy.policy.schedule.warm_level: " + violations[1].description in refused.value.details()


def test_deploy_by_cli_creates_one_pending_command(server, client, attached, capsys):
    """`narset deploy` creates exactly one PENDING command and a PENDING scaffold."""
    argv = ["deploy", "run-7", "--module", "encoder.fc1", "--blueprint", "lora", "--param", "rank=4"]
    argv += ["--warmup", "1", "--hold", "2", "--ttl", "5", "--server", server.address, "--id", "dep-1"]
    assert main(argv) == 0
    assert "PENDING" in capsys.readouterr().out
    [record] = client.list_commands("run-7")
    assert record.state == command_pb2.COMMAND_STATE_PENDING
    assert record.command.command_id == "dep-1"
    assert record.command.deploy.blueprint_params["rank"] == 4
    assert record.command.deploy.region == "encoder"
    [scaffold] = client.list_scaffolds("run-7")
    assert scaffold.scaffold_id == "dep-1"
    assert scaffold.policy.ttl_ckpts == 5
    assert scaffold.policy.schedule.warm_level == 0.5  # micro size class


def test_same_command_id_twice_yields_one_command(server, client, attached, capsys):
    """Resubmitting a command id returns the original, even when the state would now refuse a new one."""
    argv = ["deploy", "run-7", "--module", "encoder.fc1", "--blueprint", "lora", "--id", "dep-1"]
    assert main([*argv, "--server", server.address]) == 0
    assert main([*argv, "--server", server.address, "--reason", "again"]) == 0
    assert "already submitted" in capsys.readouterr().out
    [original] = client.list_commands("run-7")
    assert original.command.command_id == "dep-1" and original.command.reason == ""
    # A fresh deploy on that module would now be refused; the same id is answered with the original.
    response = client.submit(deploy("encoder.fc1", "dense_delta", command_id="dep-1"))
    assert response.duplicate
    assert response.record == original
    assert client.list_commands("run-7") == [original]


def test_duplicate_scaffold_and_budgets(client, attached):
    """A second seed on a module, a second scaffold in a region, and a fourth live scaffold are refused."""
    client.submit(deploy("encoder.fc1", command_id="a"))
    with pytest.raises(NarsetError) as duplicate:
        client.submit(deploy("encoder.fc1", "dense_delta"))
    assert duplicate.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert duplicate.value.details.startswith("deploy.module: module 'encoder.fc1' already carries scaffold 'a'")
    assert (duplicate.value.reason, duplicate.value.field) == (reasons.MODULE_OCCUPIED, "deploy.module")
    with pytest.raises(NarsetError) as per_region:
        client.submit(deploy("encoder.fc2"))
    assert per_region.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert per_region.value.details.startswith("deploy.region:")
    assert (per_region.value.reason, per_region.value.field) == (reasons.BUDGET_EXCEEDED, "deploy.region")
    client.submit(deploy("decoder.fc1"))
    client.submit(deploy("h.0.attn.c_attn"))  # outside every region: its own region
    before = ledger_snapshot(client)
    with pytest.raises(NarsetError) as total:
        client.submit(deploy("moe", "moe_expert"))
    assert total.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_live_scaffolds=3" in total.value.details
    assert (total.value.reason, total.value.field) == (reasons.BUDGET_EXCEEDED, "deploy")
    assert ledger_snapshot(client) == before


def test_policy_protected_region_refuses_deploy(client, attached):
    """A region the job policy protects accepts no deploy until it is unprotected."""
    policy = client.get_policy("run-7")
    policy.protected_regions.append("decoder")
    client.set_policy("run-7", policy)
    with pytest.raises(NarsetError) as refused:
        client.submit(deploy("decoder.fc1"))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details == "deploy.region: region 'decoder' is protected and accepts no deploy"
    assert (refused.value.reason, refused.value.field) == (reasons.REGION_PROTECTED, "deploy.region")
    del policy.protected_regions[:]
    client.set_policy("run-7", policy)
    assert client.submit(deploy("decoder.fc1")).record.state == command_pb2.COMMAND_STATE_PENDING


def test_embargoed_region_refuses_deploy_until_it_ends(client, worker_stub, attached, db):
    """An embargo refuses deploys to its region with FAILED_PRECONDITION until its end boundary."""
    store = open_store(db)  # the embargo a failed scaffold leaves, written as the decision engine does
    with store.transaction():
        store.put_embargo("run-7", job_pb2.RegionEmbargo(region="encoder", until_boundary=3, failures=1))
    store.close()
    with pytest.raises(NarsetError) as refused:
        client.submit(deploy("encoder.fc1"))
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "under embargo until boundary 3" in refused.value.details
    assert (refused.value.reason, refused.value.field) == (reasons.REGION_EMBARGOED, "deploy.region")
    for boundary in (1, 2, 3):
        worker_stub.ReportBoundary(
            worker_service_pb2.ReportBoundaryRequest(
                job_id="run-7", session_id=attached.session_id, boundary=boundary, step=boundary
            )
        )
    assert client.submit(deploy("encoder.fc1")).record.state == command_pb2.COMMAND_STATE_PENDING


def test_actions_on_a_pending_scaffold_are_refused(client, attached):
    """Fold, prune and persist need an applied scaffold; a PENDING one is refused by name."""
    client.submit(deploy("encoder.fc1", command_id="a"))
    for action in ("fold", "prune", "persist", "pause"):
        command = command_pb2.AdaptationCommand(job_id="run-7")
        getattr(command, action).scaffold.module = "encoder.fc1"
        with pytest.raises(NarsetError) as refused:
            client.submit(command)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details.startswith(f"{action}.scaffold: scaffold 'a' is still PENDING")
        assert (refused.value.reason, refused.value.field) == (reasons.SCAFFOLD_PENDING, f"{action}.scaffold")


def test_set_policy_refuses_bad_values(client, attached):
    """SetPolicy names a negative budget and an unknown auto blueprint; the policy stays as it was."""
    before = client.get_policy("run-7")
    bad = job_pb2.JobPolicy()
    bad.CopyFrom(before)
    bad.max_live_scaffolds = -1
    with pytest.raises(NarsetError) as refused:
        client.set_policy("run-7", bad)
    assert refused.value.details.startswith("policy.max_live_scaffolds:")
    assert (refused.value.reason, refused.value.field) == (reasons.INVALID_FIELD, "policy.max_live_scaffolds")
    bad.CopyFrom(before)
    bad.auto.enabled = True
    bad.auto.blueprint = "hypernet"
    with pytest.raises(NarsetError) as refused:
        client.set_policy("run-7", bad)
    assert refused.value.details.startswith("policy.auto.blueprint:")
    assert (refused.value.reason, refused.value.field) == (reasons.INVALID_FIELD, "policy.auto.blueprint")
    assert client.get_policy("run-7") == before
