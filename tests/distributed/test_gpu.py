"""CUDA-only checks (skipped without a GPU): no host-device sync per step, fp16 + GradScaler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dist_testing import MLP, deploy, max_rel_err, on, schedule

from kasmina_worker import KasminaWorker

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FP16_BOUND = 4 * 2**-11  # a few fp16 units of the output scale (unit roundoff 2⁻¹¹)


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 12, generator=g).cuda(), torch.randn(8, 6, generator=g).cuda()) for _ in range(n)]


def test_100_steps_with_live_scaffolds_never_synchronise():
    """torch.cuda.set_sync_debug_mode("error") around 100 steps with two live, teaching scaffolds."""
    torch.manual_seed(0)
    model = MLP().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    worker = KasminaWorker(model, optimizer, job="gpu-sync")
    teaching = schedule(isolated_ckpts=2, warmup_ckpts=2)
    teaching.teaching.site_distill_weight = 1.0
    worker.submit(deploy("fc1", "lora", command_id="a", blueprint_params={"rank": 2}, policy=teaching))
    worker.submit(deploy("fc2", "residual_mlp", command_id="b", blueprint_params={"hidden": 4}))
    worker.checkpoint(step=0)
    batches = _batches(100)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    worker.checkpoint(step=100)
    assert set(worker.scaffolds) == {"a", "b"}


def test_fp16_grad_scaler_lifecycle():
    """fp16 autocast + GradScaler through deploy → graft → fold: finite training, fold within 4·2⁻¹¹."""
    torch.manual_seed(0)
    model = MLP().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    worker = KasminaWorker(model, optimizer, job="gpu-fp16")
    worker.submit(
        deploy(
            "fc1", "lora", command_id="d1", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=2, hold_ckpts=4)
        )
    )
    batches = _batches(30)
    for step, (x, y) in enumerate(batches):
        if step % 5 == 0:
            worker.checkpoint(step=step)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = worker.step_loss(F.mse_loss(worker.model(x).float(), y))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    assert float(worker.scaffolds["d1"].alpha) > 0
    x = batches[0][0]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        before = model(x)
    worker.submit(on("fold", command_id="f1", scaffold_id="d1"))
    summary = worker.checkpoint(step=30)
    assert not worker.scaffolds and summary.results[0].outcome == 1
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        assert max_rel_err(model(x), before) <= FP16_BOUND
