"""bf16 folds, gradient accumulation and activation checkpointing around blocks holding a scaffold."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dist_testing import deploy, max_rel_err, on, schedule
from torch import nn
from torch.utils.checkpoint import checkpoint

from kasmina_worker import KasminaWorker

BF16_BOUND = 4 * 2**-8  # docs/kasmina.md: the blend and the fold round differently, a few bf16 units


class Blocks(nn.Module):
    """Two residual MLP blocks and a head; `checkpointed` recomputes each block in backward."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)) for _ in range(2)
        )
        self.head = nn.Linear(width, 6)
        self.checkpointed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + (checkpoint(block, x, use_reentrant=False) if self.checkpointed else block(x))
        return self.head(x)


def _data(rows: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 12, generator=g), torch.randn(rows, 6, generator=g)


def _live_worker(policy, dtype: torch.dtype = torch.float32) -> tuple[Blocks, torch.optim.Optimizer, KasminaWorker]:
    torch.manual_seed(0)
    model = Blocks().to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="amp")
    worker.submit(deploy("blocks.0.0", "lora", command_id="d1", blueprint_params={"rank": 3}, policy=policy))
    worker.checkpoint(step=0)
    for step in range(6):  # train the seed so that its delta is not zero
        x, y = (t.to(dtype) for t in _data(seed=step))
        loss = worker.step_loss(F.mse_loss(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer, worker


def test_bf16_fold_is_computed_in_fp32_and_cast_once():
    """A bf16 model folds W + alpha·ΔW in fp32, cast once (bit-equal to that reference), and its
    output after the fold is within 4·2⁻⁸ of the scaffolded output."""
    model, _, worker = _live_worker(schedule(warmup_ckpts=1, hold_ckpts=4), torch.bfloat16)
    scaffold = worker.scaffolds["d1"]
    assert float(scaffold.alpha) > 0 and scaffold.seed.delta_weight().abs().max() > 0
    expected = (scaffold.host.weight.float() + scaffold.alpha.float() * scaffold.seed.delta_weight().float()).to(
        torch.bfloat16
    )
    x = _data(32, seed=99)[0].to(torch.bfloat16)
    with torch.no_grad():
        before = model(x)
    worker.submit(on("fold", command_id="f1", scaffold_id="d1"))
    worker.checkpoint(step=6)
    assert torch.equal(model.blocks[0][0].weight, expected)
    with torch.no_grad():
        assert max_rel_err(model(x), before) <= BF16_BOUND


def test_bf16_autocast_training_and_fold_parity():
    """fp32 weights trained under CPU bf16 autocast: the scaffold blends in bf16, the fold keeps the
    autocast output within the bf16 bound."""
    torch.manual_seed(0)
    model = Blocks()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="autocast")
    worker.submit(
        deploy(
            "blocks.1.2",
            "lora",
            command_id="d1",
            blueprint_params={"rank": 3},
            policy=schedule(warmup_ckpts=1, hold_ckpts=4),
        )
    )
    worker.checkpoint(step=0)
    for step in range(6):
        x, y = _data(seed=step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        loss = worker.step_loss(F.mse_loss(out.float(), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x = _data(32, seed=99)[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
    worker.submit(on("fold", command_id="f1", scaffold_id="d1"))
    worker.checkpoint(step=6)
    assert model.blocks[1][2].weight.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert max_rel_err(model(x), before) <= BF16_BOUND


def _grads(model: nn.Module, worker: KasminaWorker, micro: int, checkpointed: bool) -> dict[str, torch.Tensor]:
    model.checkpointed = checkpointed
    x, y = _data(8, seed=123)
    model.zero_grad(set_to_none=True)
    for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
        (worker.step_loss(F.mse_loss(model(xs), ys)) / micro).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_and_activation_checkpointing_match_one_plain_step():
    """Weaning scaffold with site distillation inside a checkpointed block: 2-way accumulation with
    torch.utils.checkpoint gives the gradients of one plain step on the whole batch (1e-6 rel)."""
    teaching = schedule(warmup_ckpts=1, decay_ckpts=4)
    teaching.teaching.site_distill_weight = 1.0
    model, _, worker = _live_worker(teaching)
    summary = worker.checkpoint(step=6)  # into DECAY: host and seed both train, seed teaches host
    assert summary.scaffold("d1").stage == "SCAFFOLD_STAGE_DECAY"
    plain = _grads(model, worker, micro=1, checkpointed=False)
    accumulated = _grads(model, worker, micro=2, checkpointed=True)
    assert plain.keys() == accumulated.keys() and any(".seed." in n for n in plain)
    assert any(n.startswith("blocks.0.0.host") for n in plain)  # weaning: the host trains too
    for name, grad in plain.items():
        assert max_rel_err(accumulated[name], grad) <= 1e-6, name
