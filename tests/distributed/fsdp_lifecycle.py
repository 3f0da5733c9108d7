"""FSDP2 (fully_shard, gloo CPU) through a scaffold's life: deploy → weaning → fold → rollback →
fold, with DCP save at a boundary; `--resume` continues from that save in fresh processes."""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_testing import (
    MLP,
    batch,
    deploy,
    digest,
    eval_outputs,
    max_rel_err,
    on,
    release_process_group,
    schedule,
    write_result,
)
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from kasmina_worker import KasminaWorker
from kasmina_worker.parallel import dcp
from narset.v1 import command_pb2, telemetry_pb2

BOUNDARIES, SAVE_AT, STEPS = 10, 5, 2
FROZEN = schedule(isolated_ckpts=1, warmup_ckpts=2, hold_ckpts=1, decay_ckpts=4)
FROZEN.host_mode = command_pb2.HOST_MODE_FROZEN  # freezing and weaning are structural changes too
COMMANDS = {
    1: deploy("fc1", "lora", command_id="d1", blueprint_params={"rank": 4}, policy=FROZEN),
    7: on("fold", command_id="f1", scaffold_id="d1"),
    8: on("rollback", command_id="r1", scaffold_id="d1"),
    9: on("fold", command_id="f2", scaffold_id="d1"),
}


def make_wrap(mesh):
    def shard(model: nn.Module) -> nn.Module:
        fully_shard(model.fc1, mesh=mesh)
        fully_shard(model.fc2, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    return shard


def run_boundary(b, worker, optimizer, model, probe_x, step, result, args) -> None:
    """Boundary `b`: submit its command (rank 0), checkpoint, measure fold parity and rollback, save."""
    rank = dist.get_rank()
    if rank == 0 and b in COMMANDS:
        worker.submit(COMMANDS[b])
    y_before = eval_outputs(model, probe_x)
    if b == 7:
        result["host_before_fold"] = digest(model.fc1.host.named_parameters())
    summary = worker.checkpoint(step=step)
    assert all(r.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED for r in summary.results), summary.results
    if b in (7, 9):
        result["parity"][str(b)] = max_rel_err(eval_outputs(model, probe_x), y_before)
        result.setdefault("fold_alpha", {})[str(b)] = next(s.alpha for s in summary.scaffolds)
    if b == 8:
        result["rollback_exact"] = digest(model.fc1.host.named_parameters()) == result.pop("host_before_fold")
    assert all(isinstance(p, DTensor) for p in model.parameters()), f"boundary {b}: not re-sharded"
    if b == SAVE_AT and not args.resume:
        dcp.save(args.ckpt, worker, optimizer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = [batch(500 + i, 0) for i in range(2)]
    probe_x = torch.cat([x for x, _ in probe])
    worker = KasminaWorker(model, optimizer, job="fsdp", probe=probe, loss_fn=F.mse_loss, wrap=make_wrap(mesh))
    assert isinstance(model.fc2.weight, DTensor)
    first = 1
    if args.resume:
        dcp.load(args.ckpt, worker, optimizer)
        first = worker.boundary
        assert all(isinstance(p, DTensor) for p in model.fc1.parameters())  # re-sharded with the seed
    result: dict = {"parity": {}, "resumed_from": first if args.resume else 0}
    step = (first - 1) * STEPS
    for b in range(first, BOUNDARIES + 1):
        # A save is taken right after its boundary's checkpoint, so a resumed run trains on from there.
        if not (args.resume and b == first):
            run_boundary(b, worker, optimizer, model, probe_x, step, result, args)
        for _ in range(STEPS):
            x, y = batch(step, rank)
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    result["final"] = digest(model.named_parameters())
    result["optimizer_params"] = sum(len(g["params"]) for g in optimizer.param_groups)
    result["rebuilds"] = worker.rebuilds
    write_result(args.out, result)


if __name__ == "__main__":
    main()
    release_process_group()
