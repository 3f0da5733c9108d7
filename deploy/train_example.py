"""Example training job with Kasmina scaffolding, launched with torchrun.

    narset serve ...                                   # the control plane (optional)
    torchrun --nproc_per_node=2 deploy/train_example.py --narset 127.0.0.1:50051 --job demo \\
        --steps 400 --ckpt-every 20 --wrap ddp [--compile] [--save ckpt/]

Then drive it from the CLI (`narset deploy ...`, `narset fold ...`). Without `--narset` it runs in
local mode; `--local-deploy fc1:lora` then submits a deploy at the first boundary and
`--local-fold-at K` a fold of it at boundary K. Every rank runs this same script: rank 0 alone
talks to Narset, the worker broadcasts the commands. `--out` makes rank 0 write a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before init_process_group: see release_process_group)
import torch.nn.functional as F
from torch import nn

from kasmina_worker import KasminaWorker
from kasmina_worker.parallel import dcp
from kasmina_worker.parallel.distributed import release_process_group
from narset.v1 import command_pb2


class Net(nn.Module):
    """A small regression MLP (non-square layers) standing in for the user's model."""

    def __init__(self, d_in: int = 16, hidden: int = 32, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def batch(step: int, rank: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's deterministic batch of a fixed, bounded non-linear target.

    Bounded: products of Gaussians are heavy-tailed, and one extreme row made a batch's loss ten times the
    window's mean about once every 125 steps, which the loss-spike breaker reads as a spike and prunes for.
    """
    g = torch.Generator().manual_seed(1_000_003 * (rank + 1) + step)
    x = torch.randn(rows, 16, generator=g)
    products = torch.tanh(torch.stack([x[:, 4:8].prod(1), x[:, 0] * x[:, 1]], 1))
    return x, torch.stack([x[:, :4].sin().sum(1), products[:, 0], x[:, 8:].abs().mean(1), products[:, 1]], 1)


def stop_requested(until_file: str | None, distributed: bool, step: int, every: int) -> bool:
    """Past --steps: stop at a boundary once `until_file` exists on rank 0, every rank together."""
    if until_file is None:
        return True
    if step % every:
        return False
    flag = torch.tensor([float(Path(until_file).exists())])
    if distributed:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def make_wrap(kind: str, compiled: bool):
    """The user's wrapping function: the worker calls it again after every structural change."""

    def wrap(model: nn.Module) -> nn.Module:
        if kind == "ddp":
            model = nn.parallel.DistributedDataParallel(model)
        elif kind == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for child in model.children():
                fully_shard(child)
            model = fully_shard(model)
        return torch.compile(model) if compiled else model

    return wrap if kind != "none" or compiled else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--narset", default=None, help="host:port of `narset serve` (local mode without it)")
    parser.add_argument("--job", default="train-example")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--ckpt-every", type=int, default=20, help="steps between checkpoint boundaries")
    parser.add_argument("--wrap", choices=("ddp", "fsdp", "none"), default="ddp")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--save", default=None, help="directory for a DCP checkpoint at every boundary")
    parser.add_argument("--local-deploy", default=None, help="MODULE:BLUEPRINT deployed at boundary 1 (local mode)")
    parser.add_argument("--local-fold-at", type=int, default=0, help="fold the local deploy at this boundary")
    parser.add_argument("--out", default=None, help="rank 0 writes a JSON summary here")
    parser.add_argument(
        "--until-file", default=None, help="keep training past --steps until this file exists (rank 0 decides)"
    )
    args = parser.parse_args()
    if args.ckpt_every < 1 or args.steps < 1:
        parser.error(f"--steps and --ckpt-every must be >= 1, got {args.steps} and {args.ckpt_every}")
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    elif args.wrap != "none":
        parser.error(f"--wrap {args.wrap} needs torchrun (a process group); use --wrap none for one process")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(0)  # identical initial weights on every rank
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    probe = [batch(10**6 + i, 0) for i in range(4)]
    worker = KasminaWorker(
        model, optimizer, job=args.job, narset=args.narset, probe=probe, loss_fn=F.mse_loss,
        wrap=make_wrap(args.wrap, args.compile),
    )  # fmt: skip
    if args.local_deploy and args.narset is None:
        module, blueprint = args.local_deploy.split(":")
        deploy = command_pb2.DeployAction(module=module, blueprint=blueprint, scaffold_id="local")
        worker.submit(command_pb2.AdaptationCommand(command_id="local-deploy", deploy=deploy))
    summary, loss = None, torch.zeros(())
    with worker:
        step = 0
        while step < args.steps or not stop_requested(args.until_file, distributed, step, args.ckpt_every):
            if step % args.ckpt_every == 0:
                if args.local_fold_at and worker.boundary + 1 == args.local_fold_at:
                    fold = command_pb2.FoldAction(scaffold=command_pb2.ScaffoldRef(scaffold_id="local"))
                    worker.submit(command_pb2.AdaptationCommand(command_id="local-fold", fold=fold))
                summary = worker.checkpoint(step=step, metrics={"train_loss": float(loss)})
                if args.save:
                    dcp.save(Path(args.save) / f"boundary-{summary.boundary}", worker, optimizer)
            x, y = batch(step, rank)
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss = loss.detach()
            step += 1
    applied = [list(worker.applied_command_ids)]
    if distributed:
        applied = [None] * dist.get_world_size()
        dist.all_gather_object(applied, list(worker.applied_command_ids))
    if args.out and rank == 0:
        Path(args.out).write_text(
            json.dumps(
                {
                    "boundary": worker.boundary,
                    "applied": list(worker.applied_command_ids),
                    "applied_by_rank": applied,
                    "rebuilds": worker.rebuilds,
                    "final_loss": float(loss),
                    "probe_loss": summary.probe_loss if summary else None,
                    "scaffolds": sorted(worker.scaffolds),
                }
            )
        )
    if distributed:
        del worker, model, optimizer  # they hold the process group: see release_process_group
        dist.barrier()  # no rank tears gloo down while a peer still uses it
        release_process_group()


if __name__ == "__main__":
    main()
