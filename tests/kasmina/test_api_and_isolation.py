"""Public names, idle cost, the host's gradient while weaning, and TRAIN_ISOLATED."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_worker_links_child_starts_without_torch():
    """`python -m kasmina_worker.link` (the child that owns a job's gRPC channel) imports no torch: importing
    the package loads its public names only on first use."""
    code = "import sys, kasmina_worker.link.worker_link; print(sorted(m for m in sys.modules if m == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


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


@pytest.mark.parametrize("blueprint", ["lora", "dense_delta", "residual_mlp"])
def test_weaning_host_gets_its_full_site_gradient(blueprint):
    """During decay an additive seed's host gets exactly its full site gradient, as autograd on h + alpha·s."""
    policy = schedule(warmup_ckpts=1, hold_ckpts=1, decay_ckpts=4)
    model, worker, scaffold = _scaffolded(blueprint, policy, 12, 20)
    worker.checkpoint(step=1)
    stage = worker.checkpoint(step=2).scaffold("local-1").stage
    alpha = float(scaffold.alpha)
    assert stage == "SCAFFOLD_STAGE_DECAY" and 0 < alpha < 1
    x, y = torch.randn(6, 12), torch.randn(6, 3)
    F.mse_loss(worker.model(x), y).backward()
    got = [p.grad.clone() for p in scaffold.host.parameters()]
    # Hand-built reference: the same function with the seed's output as a constant on the host path.
    host = scaffold.host
    with torch.no_grad():
        seed_out = scaffold.seed(x, host(x), host)
    rest = nn.Sequential(model.act, model.fc2)
    host.zero_grad()
    F.mse_loss(rest(host(x) + alpha * seed_out), y).backward()
    for g, r in zip(got, [p.grad.clone() for p in host.parameters()], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    # And it is the whole site gradient: d loss / d y at the site pulled through h.
    y_site = scaffold(x).detach().requires_grad_(True)
    F.mse_loss(rest(y_site), y).backward()
    host.zero_grad()
    host(x).backward(y_site.grad)
    for g, s in zip(got, [p.grad.clone() for p in host.parameters()], strict=True):
        assert s.abs().sum() > 0
        torch.testing.assert_close(g, s, rtol=1e-5, atol=1e-7)


def test_train_isolated_host_trains_normally_and_output_is_unchanged():
    """In TRAIN_ISOLATED alpha is 0, the output is the host's exactly and the host trains."""
    model, worker, scaffold = _scaffolded("lora", schedule(isolated_ckpts=2, warmup_ckpts=1), 12, 20, {"rank": 3})
    assert float(scaffold.alpha) == 0.0
    x = torch.randn(5, 12)
    assert torch.equal(scaffold(x), scaffold.host(x))
    train(worker, torch.optim.SGD(model.parameters(), lr=0.1), steps=2, d_out=3)
    assert all(p.requires_grad for p in scaffold.host.parameters())
