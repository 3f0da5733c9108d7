"""Command application: refusals naming the field, idempotency, ids, TTL holds, persist, pause."""

from __future__ import annotations

import pytest
import torch
from kasmina_testing import MLP, ConvNet, MoEModel, deploy, on, result_ok, schedule

from kasmina_worker import KasminaWorker
from kasmina_worker.seeds.blueprints import get_blueprint
from kasmina_worker.seeds.hosts import module_info
from narset.contract import rules
from narset.v1 import command_pb2, telemetry_pb2


def _worker(model=None, **kwargs):
    torch.manual_seed(0)
    model = model or MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, KasminaWorker(model, optimizer, job="cmd", **kwargs)


def _snapshot(model):
    return [(n, type(m).__name__) for n, m in model.named_modules()], {
        k: v.clone() for k, v in model.state_dict().items()
    }


BAD = [
    (deploy("fc9", "lora"), "deploy.module", "unknown module 'fc9'"),
    (deploy("", "lora"), "deploy.module", "must name a module"),
    (deploy("fc1", "nope"), "deploy.blueprint", "unknown blueprint 'nope'"),
    (deploy("act", "lora"), "deploy.blueprint", "attaches to Linear/Conv1D/Conv2d, but module 'act' is a GELU"),
    (deploy("fc1", "moe_expert"), "deploy.blueprint", "needs a module with trait(s) moe"),
    (deploy("fc1", "lora", blueprint_params={"rank": 4097}), "deploy.blueprint_params.rank", "must be in [1, 4096]"),
    (deploy("fc1", "lora", blueprint_params={"rank": 2.5}), "deploy.blueprint_params.rank", "must be an integer"),
    (deploy("fc1", "lora", blueprint_params={"alpha": 2}), "deploy.blueprint_params.alpha", "has no parameter"),
    (
        deploy("fc1", "lora", policy=command_pb2.ScaffoldPolicy(ttl_ckpts=2)),
        "deploy.policy.ttl_ckpts",
        "exceeds ttl_ckpts 2",
    ),
    (
        deploy("fc1", "lora", policy=command_pb2.ScaffoldPolicy(schedule=command_pb2.AlphaSchedule(warm_level=1.5))),
        "deploy.policy.schedule.warm_level",
        "must be in [0, 1]",
    ),
    (deploy("fc1", "lora", learning_rate=-1.0), "deploy.learning_rate", "must be a finite number > 0"),
    (
        deploy(
            "fc1",
            "lora",
            policy=command_pb2.ScaffoldPolicy(
                teaching=command_pb2.TeachingLosses(feature=command_pb2.FeatureLoss(weight=1, taps=["nowhere"]))
            ),
        ),
        "deploy.policy.teaching.feature.taps",
        "unknown module 'nowhere'",
    ),
    (on("fold", scaffold_id="ghost"), "fold.scaffold.scaffold_id", "no live scaffold 'ghost'"),
    (on("prune", module="fc2"), "prune.scaffold.module", "no live scaffold on module 'fc2'"),
    (on("persist", scaffold_id="ghost"), "persist.scaffold.scaffold_id", "no live scaffold"),
    (on("pause", scaffold_id="ghost"), "pause.scaffold.scaffold_id", "no live scaffold"),
    (on("rollback", scaffold_id="ghost"), "rollback.scaffold.scaffold_id", "no fold of scaffold_id 'ghost'"),
    (
        command_pb2.AdaptationCommand(job_id="other", deploy=command_pb2.DeployAction(module="fc1", blueprint="lora")),
        "job_id",
        "this worker runs 'cmd'",
    ),
    (command_pb2.AdaptationCommand(), "action", "no action set"),
]


def test_dense_delta_bias_on_a_host_without_bias_is_refused_by_the_contract_rule():
    """The worker refuses a bias delta for a bias-less host with the same field and words as Narset's rule."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    _, _, worker = _worker(model)
    worker.submit(deploy("0", "dense_delta", blueprint_params={"bias": 1}))
    (result,) = worker.checkpoint(step=1).results
    assert result.outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED
    expected = rules.blueprint_fit_errors(get_blueprint("dense_delta").proto, module_info("0", model[0]), {"bias": 1})
    assert (
        result.message
        == str(expected[0])
        == "deploy.blueprint_params.bias: module '0' has no bias to fold a bias delta into"
    )


class ConvHosts(torch.nn.Module):
    """Conv2d hosts of every kind the conv rules tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.even = torch.nn.Conv2d(8, 8, 2)
        self.widening = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.no_bias = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.same_even = torch.nn.Conv2d(8, 8, 4, padding="same")  # pads 1 before and 2 after: no geometry


CONV_BAD = [
    ("grouped", "lora", {"rank": 6}, "deploy.blueprint_params.rank", "is not a multiple of the 4 groups"),
    ("even", "conv_branch", {}, "deploy.module", "has a 2x2 kernel; conv_branch's branches sit at the kernel's centre"),
    ("widening", "conv_branch", {"identity": 1}, "deploy.blueprint_params.identity", "maps 8 to 16"),
    ("no_bias", "conv_branch", {}, "deploy.blueprint_params.bn", "has no bias to take the shift"),
    ("grouped", "conv_branch", {"branch_1x1": 0}, "deploy.blueprint_params.branch_1x1", "needs a branch"),
    ("same_even", "lora", {}, "deploy.module", "has no conv geometry"),
    ("grouped", "dense_delta", {}, "deploy.blueprint", "attaches to Linear, but module 'grouped' is a Conv2d"),
    ("grouped", "residual_mlp", {}, "deploy.module", "has no known input/output feature sizes"),
]


@pytest.mark.parametrize("module,blueprint,params,field,reason", CONV_BAD, ids=[f"{c[0]}-{c[1]}" for c in CONV_BAD])
def test_conv_deploy_refusals_are_the_contract_rules(module, blueprint, params, field, reason):
    """A conv deploy that cannot be built or folded exactly is REJECTED with the message of the rule Narset applies
    (`blueprint_fit_errors` on the worker's own ModuleInfo), naming the field; the model is unchanged."""
    model, optimizer, worker = _worker(ConvHosts())
    tree, tensors = _snapshot(model)
    worker.submit(deploy(module, blueprint, blueprint_params=params))
    (result,) = worker.checkpoint(step=1).results
    assert result.outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED
    info = module_info(module, model.get_submodule(module))
    expected = rules.blueprint_fit_errors(get_blueprint(blueprint).proto, info, params)
    assert result.message == str(expected[0])
    assert result.message.startswith(f"{field}: ") and reason in result.message, result.message
    assert _snapshot(model)[0] == tree
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())


def test_conv_blueprints_fit_a_grouped_strided_dilated_conv():
    """lora (rank a multiple of the groups), expand and conv_branch (identity included) deploy on a grouped,
    strided, dilated Conv2d; lora's rank may exceed min(in, out) channels."""
    model, optimizer, worker = _worker(ConvNet(padding=1, stride=2, dilation=2, groups=4))
    for blueprint, params in [("lora", {"rank": 12}), ("expand", {}), ("conv_branch", {"identity": 1})]:
        worker.submit(deploy("conv", blueprint, blueprint_params=params))
        result_ok(worker.checkpoint(step=0))
        worker.submit(on("prune", module="conv", immediate=True))
        result_ok(worker.checkpoint(step=0))


@pytest.mark.parametrize("command,field,reason", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_command_is_rejected_naming_the_field_and_changes_nothing(command, field, reason):
    """Each bad command is REJECTED with a message naming its field and reason; the model is unchanged."""
    model, optimizer, worker = _worker()
    tree, tensors = _snapshot(model)
    worker.submit(command)
    summary = worker.checkpoint(step=1)
    (result,) = summary.results
    assert result.outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED
    assert result.message.startswith(f"{field}: ") and reason in result.message, result.message
    assert _snapshot(model)[0] == tree
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
    assert len(optimizer.param_groups) == 1 and worker.model is model
    assert result.command_id not in worker.applied_command_ids


def test_duplicate_scaffold_on_a_module_is_rejected():
    """A second deploy on a module that already has a scaffold is REJECTED naming deploy.module."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", command_id="first", blueprint_params={"rank": 2}))
    worker.checkpoint(step=0)
    tree, tensors = _snapshot(model)
    worker.submit(deploy("fc1", "dense_delta", command_id="second"))
    worker.submit(deploy("fc1.host", "dense_delta", command_id="inside"))
    worker.submit(deploy("fc2", "lora", command_id="dup-id", scaffold_id="first", blueprint_params={"rank": 2}))
    results = worker.checkpoint(step=1).results
    assert results[0].message == "deploy.module: module 'fc1' already has scaffold 'first'"
    assert results[1].message == "deploy.module: module 'fc1.host' is inside scaffold 'first'"
    assert results[2].message == "deploy.scaffold_id: scaffold id 'first' is already in use"
    assert _snapshot(model)[0] == tree and len(optimizer.param_groups) == 2


def test_scaffold_id_defaults_to_command_id_and_duplicates_are_acknowledged_once():
    """The scaffold id is the deploy's or the command id; a redelivered command id is acknowledged, not reapplied."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", command_id="c1", blueprint_params={"rank": 2}))
    worker.submit(deploy("fc2", "lora", command_id="c2", scaffold_id="named", blueprint_params={"rank": 2}))
    summary = worker.checkpoint(step=0)
    assert [r.scaffold_id for r in summary.results] == ["c1", "named"]
    worker.submit(deploy("fc1", "lora", command_id="c1", blueprint_params={"rank": 2}))
    again = worker.checkpoint(step=1).results[0]
    assert again.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED and "already applied" in again.message
    assert worker.applied_command_ids == ("c1", "c2") and len(worker.scaffolds) == 2
    assert worker.submit(on("pause", scaffold_id="c1")) == "local-1"


def test_local_mode_holds_at_ttl_until_a_decision_arrives():
    """Without Narset, at TTL the scaffold is EVALUATING and holds alpha until a fold or prune is submitted."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=2, hold_ckpts=1)))
    stages = [worker.checkpoint(step=i).scaffold("local-1") for i in range(8)]
    assert [s.stage.removeprefix("SCAFFOLD_STAGE_") for s in stages] == [
        "GRAFTING",
        "GRAFTING",
        "HOLD",
        "EVALUATING",
        "EVALUATING",
        "EVALUATING",
        "EVALUATING",
        "EVALUATING",
    ]
    assert [s.alpha for s in stages] == [0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    worker.submit(on("fold", scaffold_id="local-1"))
    summary = worker.checkpoint(step=9)
    result_ok(summary)
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_FUSED" and not worker.scaffolds


def test_persist_extends_ttl_at_most_twice_and_never_past_twice_the_original():
    """PERSIST adds boundaries to the TTL (default 3), at most 2 extensions, within 2x the original TTL."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=1, hold_ckpts=4)))
    worker.checkpoint(step=0)
    worker.submit(on("persist", scaffold_id="local-1", command_id="p1"))
    worker.submit(on("persist", scaffold_id="local-1", command_id="p2", extra_ckpts=3))
    worker.submit(on("persist", scaffold_id="local-1", command_id="p3", extra_ckpts=1))
    results = worker.checkpoint(step=1).results
    assert [r.outcome for r in results] == [1, 2, 1]
    assert results[1].message == "persist.extra_ckpts: TTL 8 + 3 would exceed 2x the original TTL (10)"
    worker.submit(on("persist", scaffold_id="local-1", command_id="p4", extra_ckpts=1))
    (result,) = worker.checkpoint(step=2).results
    assert result.message == "persist.scaffold: already extended 2 times (at most 2)"
    assert worker.checkpoint(step=3).report.scaffolds[0].ttl_ckpts == 9


def test_pause_freezes_the_schedule_and_resume_continues_it():
    """Paused, alpha and stage stay where they are across boundaries; resumed, the schedule continues."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=4, hold_ckpts=1)))
    worker.checkpoint(step=0)
    worker.submit(on("pause", module="fc1"))
    alphas = [worker.checkpoint(step=i).scaffold("local-1").alpha for i in range(1, 4)]
    assert alphas == [0.125, 0.125, 0.125]
    worker.submit(on("resume", module="fc1"))
    assert worker.checkpoint(step=4).scaffold("local-1").alpha == 0.25
    assert worker.checkpoint(step=5).scaffold("local-1").age_ckpts == 5


def test_results_and_exits_are_reported_at_the_next_boundary():
    """The report at boundary k carries the results and exits of boundary k-1 and the probe loss."""
    model, optimizer, worker = _worker(
        probe=[(torch.randn(4, 12), torch.randn(4, 6))], loss_fn=torch.nn.functional.mse_loss
    )
    worker.submit(deploy("fc1", "lora", command_id="d", blueprint_params={"rank": 2}))
    first = worker.checkpoint(step=10, metrics={"val_loss": 1.5})
    assert first.report.boundary == 1 and first.report.metrics["val_loss"] == 1.5 and not first.report.results
    assert first.probe_loss == pytest.approx(first.report.probe_loss)
    worker.submit(on("prune", command_id="p", scaffold_id="d", immediate=True))
    second = worker.checkpoint(step=20)
    assert [r.command_id for r in second.report.results] == ["d"]
    assert second.gates["d"].probe_loss == second.probe_loss
    third = worker.checkpoint(step=30)
    assert [r.command_id for r in third.report.results] == ["p"]
    assert [(s.scaffold_id, s.stage) for s in third.report.scaffolds] == [("d", telemetry_pb2.SCAFFOLD_STAGE_PRUNED)]


def test_region_resolution_and_protected_regions():
    """A deploy takes the first matching region; a protected region refuses deploys naming deploy.region."""
    from narset.v1 import job_pb2

    regions = [
        job_pb2.Region(name="head", patterns=["fc2"], protected=True),
        job_pb2.Region(name="body", patterns=["fc*"]),
    ]
    model, optimizer, worker = _worker(regions=regions)
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}))
    worker.submit(deploy("fc2", "lora", blueprint_params={"rank": 2}))
    summary = worker.checkpoint(step=0)
    assert summary.report.job_id == "cmd"
    assert worker.checkpoint(step=1).report.scaffolds[0].region == "body"
    assert summary.results[1].message == "deploy.region: region 'head' is protected and accepts no deploy"


def test_moe_blueprint_refuses_a_plain_linear_but_fits_the_moe_layer():
    """moe_expert fits the documented MoE interface (trait moe) and names the missing trait elsewhere."""
    model, optimizer, worker = _worker(model=MoEModel())
    worker.submit(deploy("proj", "moe_expert"))
    worker.submit(deploy("moe", "moe_expert"))
    results = worker.checkpoint(step=0).results
    assert results[0].outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED and "trait(s) moe" in results[0].message
    assert results[1].outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED
