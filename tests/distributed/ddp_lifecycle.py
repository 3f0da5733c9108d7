"""DDP lifecycle under torchrun: deploy → schedule → fold, rank agreement, averaged seed gradients."""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_testing import (
    MLP,
    all_ranks_equal,
    batch,
    deploy,
    max_rel_err,
    module_tensors,
    on,
    release_process_group,
    schedule,
    write_result,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kasmina_worker import KasminaWorker
from kasmina_worker.parallel.distributed import RankDisagreement
from narset.v1 import command_pb2, telemetry_pb2

BOUNDARIES = 8
FOLD_AT = 7  # mid-decay (weaning), alpha 0.25: the fold is exact at any alpha, so test it where it is not trivial
STEPS_PER_BOUNDARY = 2


def reference_grads(root: nn.Module, step: int, world: int, params: dict[str, nn.Parameter]) -> dict:
    """Gradients of one process on the concatenated batch of all ranks (no DDP, no accumulation)."""
    xs, ys = zip(*(batch(step, r) for r in range(world)), strict=True)
    loss = F.mse_loss(root(torch.cat(xs)), torch.cat(ys))
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, grads, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = [batch(500 + i, 0) for i in range(2)]
    worker = KasminaWorker(model, optimizer, job="ddp", probe=probe, loss_fn=F.mse_loss, wrap=DDP)
    policy = schedule(isolated_ckpts=1, warmup_ckpts=2, hold_ckpts=1, decay_ckpts=4)
    policy.host_mode = command_pb2.HOST_MODE_FROZEN  # freezing and weaning are structural changes too
    worker.submit(deploy("fc1", "lora", command_id="d1", blueprint_params={"rank": 4}, policy=policy))
    if rank == 1:
        # Ignored: only rank 0's queue counts.
        worker.submit(deploy("fc2", "lora", command_id="rank1-only", blueprint_params={"rank": 2}))
    rows, step, seed_errs, grad_errs, fold_err = [], 0, [], [], None
    probe_x = torch.cat([x for x, _ in probe])
    for b in range(1, BOUNDARIES + 1):
        if b == FOLD_AT:
            worker.submit(on("fold", command_id="f1", scaffold_id="d1"))
            with torch.no_grad():
                model.eval()
                y_before = model(probe_x)
                model.train()
        version, rebuilds = worker._runtime.structure_version, worker.rebuilds
        summary = worker.checkpoint(step=step)
        if b == FOLD_AT:
            with torch.no_grad():
                model.eval()
                fold_err = max_rel_err(model(probe_x), y_before)
                model.train()
        assert all(r.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED for r in summary.results), summary.results
        changed = worker._runtime.structure_version != version
        differing = all_ranks_equal(module_tensors(model))
        assert not differing, f"boundary {b}: ranks differ on {differing}"
        rows.append(
            {
                "boundary": b,
                "changed": changed,
                "rebuilt": worker.rebuilds - rebuilds,
                "stages": {s.scaffold_id: s.stage for s in summary.scaffolds},
                "alpha": {s.scaffold_id: s.alpha for s in summary.scaffolds},
                "applied": list(worker.applied_command_ids),
                "probe_loss": summary.probe_loss,
                "ddp": type(worker.model).__name__,
            }
        )
        for _ in range(STEPS_PER_BOUNDARY):
            trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
            expected = reference_grads(model, step, world, trainable)
            x, y = batch(step, rank)
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(worker.model(x), y).backward()
            for name, param in trainable.items():
                if expected[name] is None:
                    continue
                err = max_rel_err(param.grad, expected[name]) if expected[name].abs().max() > 0 else 0.0
                (seed_errs if ".seed." in name else grad_errs).append(err)
            optimizer.step()
            step += 1
    result = {
        "rows": rows,
        "rebuilds": worker.rebuilds,
        "seed_grad_rel_err": max(seed_errs),
        "seed_grad_checks": len(seed_errs),
        "host_grad_rel_err": max(grad_errs),
        "fold_rel_err": fold_err,
    }
    # A rank whose module tree differs is an error on every rank, naming it.
    if rank == 1:
        model.extra = nn.Linear(2, 2)
    try:
        worker.checkpoint(step=step)
        raise AssertionError("a module-tree disagreement went unnoticed")
    except RankDisagreement as error:
        result["tree_error"] = str(error)
    if rank == 1:
        del model.extra
        worker._applier.applied.append("bogus")
    try:
        worker.checkpoint(step=step)
        raise AssertionError("an applied-commands disagreement went unnoticed")
    except RankDisagreement as error:
        result["applied_error"] = str(error)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
    release_process_group()
