"""An exit's reported stage says what happened to the seed's function."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MLP, batch, deploy, on, result_ok, schedule, train

from kasmina_worker import KasminaWorker, WorkerConfig


def _residual_worker(**phases: int) -> tuple[torch.optim.Optimizer, KasminaWorker]:
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="exit")
    worker.submit(deploy("fc2", "residual_mlp", "mlp", blueprint_params={"hidden": 4}, policy=schedule(**phases)))
    result_ok(worker.checkpoint(step=0))
    return optimizer, worker


def test_fold_of_an_unweaned_residual_seed_is_reported_pruned():
    """A fold asked in HOLD of a residual seed (no DECAY has run) removes it like a prune: PRUNED, and says so."""
    optimizer, worker = _residual_worker(warmup_ckpts=1, hold_ckpts=5)
    worker.submit(on("fold", "fold", scaffold_id="mlp"))
    summary = worker.checkpoint(step=1)
    result_ok(summary)
    assert "not weaned" in summary.results[0].message and "PRUNED" in summary.results[0].message
    assert summary.scaffold("mlp").stage == "SCAFFOLD_STAGE_SUNSET"
    train(worker, optimizer, steps=2)
    assert worker.checkpoint(step=2).scaffold("mlp").stage == "SCAFFOLD_STAGE_PRUNED"
    assert not worker.scaffolds


def test_fold_of_a_weaned_residual_seed_is_reported_fused():
    """Once its whole DECAY has run (alpha at the floor, 0), a residual seed's fold leaves at once as FUSED."""
    optimizer, worker = _residual_worker(warmup_ckpts=1, hold_ckpts=1, decay_ckpts=2)
    for step in range(1, 6):
        train(worker, optimizer, steps=1, start=step)
        summary = worker.checkpoint(step=step)
    assert summary.scaffold("mlp").stage == "SCAFFOLD_STAGE_EVALUATING" and summary.scaffold("mlp").alpha == 0.0
    worker.submit(on("fold", "fold", scaffold_id="mlp"))
    summary = worker.checkpoint(step=6)
    result_ok(summary)
    assert "not weaned" not in summary.results[0].message
    assert summary.scaffold("mlp").stage == "SCAFFOLD_STAGE_FUSED" and not worker.scaffolds


def test_fold_parity_is_measured_under_the_training_autocast_as_well():
    """With WorkerConfig(autocast=bfloat16) a fold's result gives the parity without autocast (fp32-exact) and
    under bf16 autocast (bf16 rounding, within the documented bound), and the gate keeps the first."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = [batch(100 + i, (8, 12), 6) for i in range(2)]
    config = WorkerConfig(autocast=torch.bfloat16)
    worker = KasminaWorker(model, optimizer, job="autocast", probe=probe, loss_fn=F.mse_loss, config=config)
    worker.submit(deploy("fc1", "lora", "lora", blueprint_params={"rank": 2}))
    result_ok(worker.checkpoint(step=0))
    with torch.no_grad():
        for param in worker.scaffolds["lora"].seed.parameters():
            param.normal_(std=0.2)  # a delta worth folding
    worker.submit(on("fold", "fold", scaffold_id="lora"))
    summary = worker.checkpoint(step=1)
    result_ok(summary)
    numbers = re.search(r"rel err (\S+) without autocast, (\S+) under bfloat16 autocast", summary.results[0].message)
    assert numbers, summary.results[0].message
    plain, autocast = (float(v) for v in numbers.groups())
    assert plain < 1e-6 < autocast <= 4 * 2**-8
    assert summary.gates["lora"].foldability == pytest.approx(1.0 - plain, abs=1e-9)
