"""Alpha changes never recompile; the per-step path never synchronises."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kasmina_testing import MLP, MLP3, batch, deploy, result_ok, schedule
from torch._dynamo.utils import counters

from kasmina_worker import KasminaWorker


def test_alpha_changes_at_200_boundaries_do_not_recompile():
    """A compiled model runs 200 steps across 200 boundaries of one warmup phase under fail_on_recompile."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    worker = KasminaWorker(model, optimizer, job="compile", wrap=torch.compile)
    worker.submit(deploy("0", "lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=400)))
    result_ok(worker.checkpoint(step=0))
    compiled = worker.model
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    optimizer.zero_grad()
    F.mse_loss(compiled(x), y).backward()  # first compile, outside the stance
    alphas = []
    counters.clear()
    with torch.compiler.set_stance("fail_on_recompile"):
        for step in range(200):
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            summary = worker.checkpoint(step=step + 1)
            alphas.append(summary.scaffold("local-1").alpha)
            assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_GRAFTING"
    assert worker.model is compiled
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 0  # nothing traced again
    assert len(set(alphas)) == 200 and alphas == sorted(alphas)
    assert float(worker.scaffolds["local-1"].alpha) == alphas[-1]


def test_scaffolds_trace_into_the_models_graph_without_graph_breaks():
    """A model with a live additive (LoRA) and a live residual scaffold is one dynamo graph with 0 graph breaks, as
    without them; compiled training steps through the worker (blend, breakers, seed guards) add none."""
    torch.manual_seed(0)
    model = MLP3()
    x, y = batch(0, (8, 12), 6)
    plain = torch._dynamo.explain(model)(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    worker = KasminaWorker(model, optimizer, job="breaks", wrap=torch.compile)
    worker.submit(deploy("fc1", "lora", command_id="a", blueprint_params={"rank": 2}))
    worker.submit(deploy("fc2", "residual_mlp", command_id="b", blueprint_params={"hidden": 4}))
    summary = worker.checkpoint(step=0)
    result_ok(summary, 0)
    result_ok(summary, 1)
    scaffolded = torch._dynamo.explain(model)(x)
    assert (plain.graph_count, plain.graph_break_count) == (1, 0)
    assert (scaffolded.graph_count, scaffolded.graph_break_count) == (1, 0), scaffolded.break_reasons
    assert scaffolded.op_count > plain.op_count  # the scaffolds are in the graph
    counters.clear()
    for _ in range(3):
        loss = worker.step_loss(F.mse_loss(worker.model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1


def _raise(*args, **kwargs):
    raise AssertionError("host-device synchronisation in the per-step path")


def test_no_per_step_sync_with_live_scaffolds(monkeypatch):
    """Tensor.item, .cpu and .tolist are never called during 50 steps with live, teaching scaffolds."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)  # torch's CPU Adam itself calls .item()
    worker = KasminaWorker(model, optimizer, job="nosync")
    distill = schedule(isolated_ckpts=3, warmup_ckpts=1)
    distill.teaching.site_distill_weight = 1.0
    distill.teaching.kd.weight = 0.5
    worker.submit(deploy("fc1", "lora", command_id="a", blueprint_params={"rank": 2}, policy=distill))
    worker.submit(deploy("fc2", "residual_mlp", command_id="b", blueprint_params={"hidden": 4}))
    summary = worker.checkpoint(step=0)
    result_ok(summary, 0)
    result_ok(summary, 1)
    batches = [batch(step, (8, 12), 6) for step in range(50)]
    for name in ("item", "cpu", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, _raise)
    for x, y in batches:
        loss = worker.step_loss(F.mse_loss(worker.model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    monkeypatch.undo()
    assert torch.isfinite(worker.step_losses("a")).all() and worker.step_losses("a").numel() == 20
    worker.checkpoint(step=50)
