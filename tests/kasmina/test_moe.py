"""The moe_expert blueprint on the documented router + experts interface, and its router fold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MoEModel, batch, deploy, max_rel_err, on, result_ok, schedule

from kasmina_worker import KasminaWorker, moe_combine

ROUTER_FOLD_BOUND = 1e-5  # docs/kasmina.md: site parity after the sunset to alpha 1, fp32


def _train(worker, optimizer, steps, start=0):
    for step in range(start, start + steps):
        x, y = batch(step, (16, 6), 3)
        loss = worker.step_loss(F.mse_loss(worker.model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _moe_worker():
    torch.manual_seed(4)
    model = MoEModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = [batch(500 + i, (16, 6), 3) for i in range(3)]
    worker = KasminaWorker(model, optimizer, job="moe", probe=probe, loss_fn=F.mse_loss)
    _train(worker, optimizer, 5)
    worker.submit(deploy("moe", "moe_expert", policy=schedule(warmup_ckpts=2, hold_ckpts=3)))
    result_ok(worker.checkpoint(step=5))
    _train(worker, optimizer, 6, start=5)
    worker.checkpoint(step=11)
    _train(worker, optimizer, 4, start=11)
    return model, optimizer, worker


def test_moe_seed_routes_over_host_experts_plus_the_new_one():
    """The seed output is top-k routing over the host's experts and the new expert with the new router row."""
    model, optimizer, worker = _moe_worker()
    scaffold = worker.scaffolds["local-1"]
    host, seed = scaffold.host, scaffold.seed
    x = torch.randn(5, 8)
    with torch.no_grad():
        logits = torch.cat([host.router(x), seed.router_row(x)], dim=-1)
        expected = moe_combine(logits, [e(x) for e in host.experts] + [seed.expert(x)], host.top_k)
        assert torch.equal(seed(x, host(x), host), expected)
        assert max_rel_err(expected, host(x)) > 1e-3


def test_router_fold_after_sunset_is_within_the_documented_bound():
    """Fold at warm alpha: a sunset ramps alpha to 1, then the router fold's measured parity is within bound."""
    model, optimizer, worker = _moe_worker()
    scaffold = worker.scaffolds["local-1"]
    assert float(scaffold.alpha) == pytest.approx(0.1)
    worker.submit(on("fold", module="moe"))
    s1 = worker.checkpoint(step=15)
    assert s1.scaffold("local-1").stage == "SCAFFOLD_STAGE_SUNSET"
    assert s1.scaffold("local-1").alpha == pytest.approx(0.55)
    _train(worker, optimizer, 3, start=15)
    x = torch.randn(32, 6)
    with torch.no_grad():
        ramp_end = scaffold.alpha.clone()
        scaffold.alpha.fill_(1.0)  # where the sunset arrives at the next boundary
        before = model(x)
        scaffold.alpha.copy_(ramp_end)
    s2 = worker.checkpoint(step=18)
    assert float(scaffold.alpha) == 1.0
    assert s2.scaffold("local-1").stage == "SCAFFOLD_STAGE_FUSED"
    foldability = s2.gates["local-1"].foldability
    assert 1.0 - foldability <= ROUTER_FOLD_BOUND
    host = scaffold.host
    assert model.moe is host and len(host.experts) == 4 and host.router.out_features == 4
    with torch.no_grad():
        assert max_rel_err(model(x), before) <= ROUTER_FOLD_BOUND
    # The grown router and the new expert are trained by the user's optimiser from now on.
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(host.router.weight) in params and all(id(p) in params for p in host.experts[3].parameters())
    assert len(optimizer.param_groups) == 1
    assert optimizer.state[host.router.weight]["exp_avg"].shape == (4, 8)
    weight_before = host.router.weight.detach().clone()
    _train(worker, optimizer, 2, start=18)
    assert not torch.equal(host.router.weight, weight_before)


def test_router_fold_parity_below_alpha_one_is_measured_not_hidden():
    """With no sunset (sunset_ckpts 0) the fold at alpha < 1 is taken and its parity gap is reported."""
    torch.manual_seed(4)
    model = MoEModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = [batch(500, (16, 6), 3)]
    worker = KasminaWorker(model, optimizer, job="moe", probe=probe, loss_fn=F.mse_loss)
    policy = schedule(warmup_ckpts=1, hold_ckpts=2)
    policy.fold.sunset_ckpts = 0
    worker.submit(deploy("moe", "moe_expert", policy=policy))
    worker.checkpoint(step=0)
    _train(worker, optimizer, 4)
    worker.submit(on("fold", module="moe"))
    summary = worker.checkpoint(step=4)
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_FUSED"
    assert 0 < 1.0 - summary.gates["local-1"].foldability < 1.0


def test_router_fold_rollback_restores_the_host_bit_for_bit():
    """Rolling back a router fold restores router tensors and expert list exactly and the scaffold as it was."""
    model, optimizer, worker = _moe_worker()
    host = worker.scaffolds["local-1"].host
    pre = {k: v.clone() for k, v in host.state_dict().items()}
    worker.submit(on("fold", module="moe"))
    worker.checkpoint(step=15)
    worker.checkpoint(step=16)
    assert len(host.experts) == 4
    worker.submit(on("rollback", module="moe"))
    result_ok(worker.checkpoint(step=17))
    assert len(host.experts) == 3 and host.router.out_features == 3
    assert host.state_dict().keys() == pre.keys()
    assert all(torch.equal(v, pre[k]) for k, v in host.state_dict().items())
    assert worker.scaffolds["local-1"].host is host
    assert optimizer.state[host.router.weight]["exp_avg"].shape == (3, 8)
    _train(worker, optimizer, 2, start=17)
