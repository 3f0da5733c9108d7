"""The blend at a scaffold site (docs/design.md, section 4): zero-shock entry, the gradient of the function the
site computes, a frozen host only on request, and default schedules in which something always learns."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MLP3, MoEModel, batch, deploy, result_ok, schedule, train
from torch import nn

from kasmina_worker import KasminaWorker
from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.contract.scaffold_policy import effective_policy
from narset.v1 import command_pb2

DELTA = [("lora", {"rank": 3}), ("expand", {"width_factor": 1}), ("dense_delta", {})]
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-7  # fp32: the folded weight rounds W + alpha·ΔW once, the blend does not


def _trained_mlp3() -> tuple[MLP3, torch.optim.Optimizer, KasminaWorker]:
    """A 3-layer MLP after a few real steps (trained, not freshly initialised, weights)."""
    torch.manual_seed(0)
    model = MLP3()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="blend")
    train(worker, optimizer, steps=5)
    return model, optimizer, worker


def _host_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The host parameters under their names in the model without scaffolds."""
    return {n.replace(".host.", "."): p for n, p in model.named_parameters() if ".seed." not in n}


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_hook=lambda loss: loss) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss_hook(F.mse_loss(out, y)).backward()
    return out.detach()


@pytest.mark.parametrize("blueprint,params", DELTA)
def test_delta_deploy_is_zero_shock_for_the_output_and_every_host_gradient(blueprint, params):
    """Right after a delta deploy (Δ = 0, alpha > 0) the output and the gradient of every host parameter, upstream,
    at the site and downstream, equal the model's without the scaffold bit for bit (tolerance 0), and so does the
    host after the optimiser step."""
    model, optimizer, worker = _trained_mlp3()
    plain = copy.deepcopy(model)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.05)
    worker.submit(deploy("fc2", blueprint, blueprint_params=params))
    result_ok(worker.checkpoint(step=5))
    scaffold = worker.scaffolds["local-1"]
    assert float(scaffold.alpha) > 0 and not scaffold.seed.delta_weight().any()
    x, y = batch(5, (8, 12), 6)
    assert torch.equal(_step(worker.model, x, y, worker.step_loss), _step(plain, x, y))
    hosted, reference = _host_params(model), dict(plain.named_parameters())
    assert hosted.keys() == reference.keys()
    for name, param in reference.items():
        assert param.grad.abs().sum() > 0, name
        assert torch.equal(hosted[name].grad, param.grad), name
    optimizer.step()
    plain_optimizer.step()
    assert all(torch.equal(hosted[name], param) for name, param in reference.items())


def _folded_copy(model: nn.Module, blueprint: str, scaffold, alpha: float) -> MLP3:
    """A plain MLP3 whose fc2 holds the folded weight W + alpha·ΔW (and bias), ΔW written out from the factors."""
    plain = MLP3()
    plain.load_state_dict({n: p.detach() for n, p in _host_params(model).items()})
    seed = scaffold.seed
    with torch.no_grad():
        if blueprint in ("lora", "expand"):  # expand on a Linear is the product U·V, held as a LoRA's B·A
            plain.fc2.weight += alpha * seed.scaling * (seed.b @ seed.a)
        else:
            plain.fc2.weight += alpha * seed.d
            plain.fc2.bias += alpha * seed.bias
    return plain


@pytest.mark.parametrize("blueprint,params", DELTA)
def test_live_delta_sends_upstream_the_gradient_through_the_folded_weight(blueprint, params):
    """At alpha 0.5 with a trained, non-zero Δ, the layers upstream (and downstream) get the gradient of a plain model
    whose middle weight is W + alpha·ΔW, and the host weight at the site gets its full gradient, the folded weight's
    (fp32, rtol 1e-5, atol 1e-7)."""
    model, optimizer, worker = _trained_mlp3()
    policy = schedule(warmup_ckpts=1, hold_ckpts=10)
    policy.schedule.warm_level = 0.5
    policy.lr_scale = 10.0  # a seed rate of 0.5 grows a sizeable Δ in a few steps
    worker.submit(deploy("fc2", blueprint, blueprint_params=params, policy=policy))
    result_ok(worker.checkpoint(step=5))
    train(worker, optimizer, steps=10, start=5)
    scaffold = worker.scaffolds["local-1"]
    alpha = float(scaffold.alpha)
    assert alpha == 0.5
    x, y = batch(15, (8, 12), 6)
    folded, unfolded = _folded_copy(model, blueprint, scaffold, alpha), _folded_copy(model, blueprint, scaffold, 0.0)
    torch.testing.assert_close(_step(worker.model, x, y), _step(folded, x, y), rtol=GRAD_RTOL, atol=GRAD_ATOL)
    _step(unfolded, x, y)
    hosted = _host_params(model)
    for name, param in folded.named_parameters():
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(hosted[name].grad, param.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)
    # Δ is large enough that the gradient through W alone would be told apart.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(unfolded.fc1.weight.grad, folded.fc1.weight.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("blueprint,params", [*DELTA, ("residual_mlp", {"hidden": 5})])
@pytest.mark.parametrize("host_mode", [None, command_pb2.HOST_MODE_JOINT, command_pb2.HOST_MODE_FROZEN])
def test_host_is_frozen_only_under_explicit_host_mode_frozen_and_upstream_still_learns(blueprint, params, host_mode):
    """Unless the policy says host_mode FROZEN every host parameter trains; when it does, only the host module's own
    parameters stop (requires_grad False, no grad) while grafting and holding, upstream and downstream layers and
    the seed still get gradient, and weaning gives the host its own flags back (a user-frozen bias stays frozen)."""
    model, optimizer, worker = _trained_mlp3()
    model.fc2.bias.requires_grad_(False)
    policy = schedule(warmup_ckpts=1, hold_ckpts=1, decay_ckpts=2)
    if host_mode is not None:
        policy.host_mode = host_mode
    worker.submit(deploy("fc2", blueprint, blueprint_params=params, policy=policy))
    summary = worker.checkpoint(step=5)
    result_ok(summary)
    scaffold = worker.scaffolds["local-1"]
    frozen = host_mode == command_pb2.HOST_MODE_FROZEN
    for start, stage in ((5, "GRAFTING"), (7, "HOLD")):
        assert summary.scaffold("local-1").stage == f"SCAFFOLD_STAGE_{stage}"
        train(worker, optimizer, steps=2, start=start)
        assert scaffold.host.weight.requires_grad is not frozen and not scaffold.host.bias.requires_grad
        assert (scaffold.host.weight.grad is None) is frozen and scaffold.host.bias.grad is None
        for layer in (model.fc1, model.fc3):
            assert all(p.requires_grad and p.grad.abs().sum() > 0 for p in layer.parameters())
        assert all(p.requires_grad and p.grad is not None for p in scaffold.seed.parameters())
        assert any(p.grad.abs().sum() > 0 for p in scaffold.seed.parameters())
        summary = worker.checkpoint(step=start + 2)
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_DECAY"
    assert scaffold.host.weight.requires_grad and not scaffold.host.bias.requires_grad


def test_replacement_seed_blends_by_lerp_with_the_gradients_of_the_blend():
    """moe_expert (a replacement seed) outputs lerp(h, s, alpha): the layer upstream and the host's router get the
    gradients autograd gives that blend written with torch.lerp (fp32, rtol 1e-5, atol 1e-7)."""
    torch.manual_seed(4)
    model = MoEModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="moe")
    worker.submit(deploy("moe", "moe_expert", policy=schedule(warmup_ckpts=1, hold_ckpts=2)))
    result_ok(worker.checkpoint(step=0))
    train(worker, optimizer, steps=4, d_in=6, d_out=3)
    scaffold = worker.scaffolds["local-1"]
    alpha = float(scaffold.alpha)
    assert 0 < alpha < 1
    x, y = batch(9, (16, 6), 3)
    _step(worker.model, x, y)
    params = [model.proj.weight, scaffold.host.router.weight, scaffold.seed.router_row.weight]
    got = [p.grad.clone() for p in params]

    def reference(inp: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(model.proj(inp))
        h = scaffold.host(z)
        return model.head(torch.lerp(h, scaffold.seed(z, h, scaffold.host), alpha))

    model.zero_grad(set_to_none=True)
    F.mse_loss(reference(x), y).backward()
    for g, p in zip(got, params, strict=True):
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(g, p.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_no_builtin_default_schedule_has_an_idle_stage_or_freezes_the_host():
    """Every built-in blueprint's effective default policy trains the host jointly at the seed rate of its host
    group (lr_scale 1) and has no TRAIN_ISOLATED stage (the built-in seeds get no task gradient at alpha 0)."""
    for blueprint in BUILTIN_BLUEPRINTS:
        policy = effective_policy(blueprint, command_pb2.ScaffoldPolicy())
        assert policy.schedule.isolated_ckpts == 0, blueprint.name
        assert policy.host_mode == command_pb2.HOST_MODE_JOINT and policy.lr_scale == 1.0, blueprint.name
