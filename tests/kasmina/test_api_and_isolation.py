"""Public names, idle cost, gradient isolation and weaning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MLP, deploy, result_ok, schedule, train
from torch import nn

import kasmina_worker
from kasmina_worker import KasminaWorker


def test_public_names_are_pinned():
    """The package exports exactly the documented public names."""
    assert sorted(kasmina_worker.__all__) == [
        "BlueprintSpec",
        "BoundarySummary",
        "BreakerConfig",
        "BuildContext",
        "CommandSource",
        "Conv1D",
        "FoldError",
        "KasminaWorker",
        "LocalQueue",
        "ProbeLoss",
        "Scaffold",
        "ScaffoldSummary",
        "Seed",
        "TopKMoE",
        "WorkerConfig",
        "blueprint_names",
        "moe_combine",
        "register_blueprint",
    ]
    for name in kasmina_worker.__all__:
        assert getattr(kasmina_worker, name) is not None


def test_idle_is_free():
    """With nothing deployed, worker.model is the model, its tree is unchanged, step_loss(x) is x."""
    model = MLP()
    before = [(name, type(m)) for name, m in model.named_modules()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    worker = KasminaWorker(model, optimizer, job="idle")
    loss = F.mse_loss(worker.model(torch.randn(4, 12)), torch.randn(4, 6))
    assert worker.model is model
    assert worker.step_loss(loss) is loss
    summary = worker.checkpoint(step=1)
    assert summary.boundary == 1 and summary.scaffolds == ()
    assert worker.model is model
    assert [(name, type(m)) for name, m in model.named_modules()] == before
    assert len(optimizer.param_groups) == 1


def test_idle_with_wrap_is_the_wrap_of_the_model():
    """With a wrap and nothing deployed, worker.model is wrap(model), built once."""
    model = MLP()
    wrapped = nn.Sequential(model)
    calls = []
    worker = KasminaWorker(
        model, torch.optim.SGD(model.parameters(), lr=0.1), job="w", wrap=lambda m: calls.append(m) or wrapped
    )
    assert worker.model is wrapped and worker.model is wrapped
    assert calls == [model]


def _scaffolded(blueprint: str, alpha_schedule, d_in: int, hidden: int, params=None):
    torch.manual_seed(d_in * 100 + hidden)
    model = MLP(d_in, hidden, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="iso")
    worker.submit(deploy("fc1", blueprint, blueprint_params=params or {}, policy=alpha_schedule))
    result_ok(worker.checkpoint(step=0))
    scaffold = worker.scaffolds["local-1"]
    for p in scaffold.seed.parameters():
        torch.nn.init.normal_(p, std=0.3)  # non-identity seed so that gradients really flow
    return model, worker, scaffold


@pytest.mark.parametrize(
    "blueprint,params", [("lora", {"rank": 2}), ("dense_delta", {}), ("residual_mlp", {"hidden": 5})]
)
@pytest.mark.parametrize("d_in,hidden", [(5, 7), (12, 4), (9, 9)])
@pytest.mark.parametrize("warmup", [1, 2, 5])
def test_isolated_host_gets_no_gradient_and_seed_does(blueprint, params, d_in, hidden, warmup):
    """While isolated (grafting), the task loss gives host params no gradient and the seed a non-zero one."""
    model, worker, scaffold = _scaffolded(blueprint, schedule(warmup_ckpts=warmup, hold_ckpts=3), d_in, hidden, params)
    alpha = float(scaffold.alpha)
    assert 0 < alpha <= 1 and float(scaffold.isolation) == 1.0
    x = torch.randn(6, d_in)
    loss = worker.step_loss(F.mse_loss(worker.model(x), torch.randn(6, 3)))
    loss.backward()
    for p in scaffold.host.parameters():
        assert not p.requires_grad and p.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scaffold.seed.parameters() if p.dim() > 1)
    # The blend itself blocks the host path too, even if requires_grad were set again.
    for p in scaffold.host.parameters():
        p.requires_grad_(True)
    model.zero_grad()
    F.mse_loss(model(x), torch.randn(6, 3)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in scaffold.host.parameters())


@pytest.mark.parametrize("blueprint", ["lora", "dense_delta", "residual_mlp"])
def test_weaning_host_gets_exactly_one_minus_alpha_of_site_gradient(blueprint):
    """During decay the host's parameters get exactly (1 - alpha) of the site gradient, as autograd on a reference."""
    policy = schedule(warmup_ckpts=1, hold_ckpts=1, decay_ckpts=4)
    model, worker, scaffold = _scaffolded(blueprint, policy, 12, 20)
    worker.checkpoint(step=1)
    worker.checkpoint(step=2)
    alpha = float(scaffold.alpha)
    assert float(scaffold.isolation) == 0.0 and 0 < alpha < 1
    x, y = torch.randn(6, 12), torch.randn(6, 3)
    F.mse_loss(worker.model(x), y).backward()
    got = [p.grad.clone() for p in scaffold.host.parameters()]
    # Hand-built reference: the same function with the seed's output as a constant on the host path.
    host = scaffold.host
    with torch.no_grad():
        seed_out = scaffold.seed(x, host(x), host)
    rest = nn.Sequential(model.act, model.fc2)

    def blended(inp: torch.Tensor) -> torch.Tensor:
        h = host(inp)
        return (1 - alpha) * h + alpha * seed_out

    host.zero_grad()
    F.mse_loss(rest(blended(x)), y).backward()
    blend_ref = [p.grad.clone() for p in host.parameters()]
    for g, r in zip(got, blend_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    # And it is (1 - alpha) times the site gradient: d loss / d y at the site pulled through h.
    y_site = scaffold(x).detach().requires_grad_(True)
    F.mse_loss(rest(y_site), y).backward()
    host.zero_grad()
    host(x).backward(y_site.grad)
    site = [p.grad.clone() for p in host.parameters()]
    for g, s in zip(got, site, strict=True):
        assert s.abs().sum() > 0
        torch.testing.assert_close(g, (1 - alpha) * s, rtol=1e-5, atol=1e-7)


def test_train_isolated_host_trains_normally_and_output_is_unchanged():
    """In TRAIN_ISOLATED alpha is 0, the output is the host's exactly and the host trains."""
    model, worker, scaffold = _scaffolded("lora", schedule(isolated_ckpts=2, warmup_ckpts=1), 12, 20, {"rank": 3})
    assert float(scaffold.alpha) == 0.0 and float(scaffold.isolation) == 0.0
    x = torch.randn(5, 12)
    assert torch.equal(scaffold(x), scaffold.host(x))
    train(worker, torch.optim.SGD(model.parameters(), lr=0.1), steps=2, d_out=3)
    assert all(p.requires_grad for p in scaffold.host.parameters())
