"""Conv2d hosts under torchrun (gloo, 2 ranks), DDP or FSDP2: a conv_branch with BatchNorm and a conv lora
deployed, trained on each rank's own images, folded, rolled back and folded again; ranks stay identical."""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_testing import (
    all_ranks_equal,
    deploy,
    digest,
    eval_outputs,
    full,
    max_rel_err,
    module_tensors,
    on,
    release_process_group,
    schedule,
    write_result,
)
from kasmina_testing import IMAGE, ConvNet
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from kasmina_worker import KasminaWorker
from narset.v1 import telemetry_pb2

BOUNDARIES, STEPS = 8, 3
POLICY = schedule(warmup_ckpts=1, hold_ckpts=8)
COMMANDS = {
    1: [
        deploy("conv", "conv_branch", command_id="branch", blueprint_params={"identity": 1}, policy=POLICY),
        deploy("stem", "lora", command_id="lora", blueprint_params={"rank": 12}, policy=POLICY),  # rank > channels
    ],
    5: [on("fold", command_id="f1", scaffold_id="branch"), on("fold", command_id="f2", scaffold_id="lora")],
    6: [on("rollback", command_id="r1", scaffold_id="branch")],
    7: [on("fold", command_id="f3", scaffold_id="branch")],
}
FOLDS = {5: ("branch", "lora"), 7: ("branch",)}


def images(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s deterministic image batch of `step`: every rank trains on different images."""
    g = torch.Generator().manual_seed(20_000 * (rank + 1) + step)
    return torch.randn(*IMAGE, generator=g) * 2 + 0.5, torch.randn(IMAGE[0], 6, generator=g)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (seed BatchNorm statistics included) as a full tensor; collective under FSDP2."""
    return {name: full(t).detach() for name, t in module_tensors(model).items()}


def seed_statistics_differ(worker: KasminaWorker) -> bool:
    """True when the ranks' seed BatchNorm running means differ (before a boundary makes them agree)."""
    norms = [m for s in worker.scaffolds.values() for m in s.seed.modules() if isinstance(m, nn.BatchNorm2d)]
    return bool(norms) and bool(all_ranks_equal({str(i): norm.running_mean for i, norm in enumerate(norms)}))


def make_wrap(kind: str):
    if kind == "ddp":
        return DDP
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))

    def shard(model: nn.Module) -> nn.Module:
        fully_shard(model.conv, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    return shard


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--wrap", choices=["ddp", "fsdp"], required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = ConvNet(groups=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = [images(500 + i, 0) for i in range(2)]
    probe_x = torch.cat([x for x, _ in probe])
    worker = KasminaWorker(model, optimizer, job="conv", probe=probe, loss_fn=F.mse_loss, wrap=make_wrap(args.wrap))
    result: dict = {"parity": {}, "measured_parity": {}, "differ_before": {}, "wrapper": type(worker.model).__name__}
    step = 0
    for b in range(1, BOUNDARIES + 1):
        if rank == 0:
            for command in COMMANDS.get(b, []):
                worker.submit(command)
        result["differ_before"][str(b)] = seed_statistics_differ(worker)
        if b == 5:
            result["host_before_fold"] = digest(module_tensors(model.conv.host).items())
        y_before = eval_outputs(model, probe_x)
        summary = worker.checkpoint(step=step)
        assert all(r.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED for r in summary.results), summary.results
        differing = all_ranks_equal(state(model))
        assert not differing, f"boundary {b}: ranks differ on {differing}"
        if b in FOLDS:
            result["parity"][str(b)] = max_rel_err(eval_outputs(model, probe_x), y_before)
            result["measured_parity"][str(b)] = [summary.gates[sid].foldability for sid in FOLDS[b]]
        if b == 6:
            result["rollback_exact"] = digest(module_tensors(model.conv.host).items()) == result.pop("host_before_fold")
        for _ in range(STEPS):
            x, y = images(step, rank)
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    result["live_at_end"] = sorted(worker.scaffolds)
    result["applied"] = list(worker.applied_command_ids)
    result["rebuilds"] = worker.rebuilds
    write_result(args.out, result)


if __name__ == "__main__":
    main()
    release_process_group()
