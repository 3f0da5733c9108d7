"""Cost of a checkpoint boundary: `worker.checkpoint()` with 0, 1 and 3 live scaffolds.

    python benchmarks/boundary_cost.py [--width 512] [--depth 4] [--probe-batch 64] [--probe-batches 20]
                                       [--boundaries 10] [--threads N]

A model of `depth` x Linear(width, width) + GELU and a head trains with Adam in local mode (no
Narset: the exchange is the local queue). With 0, 1 and 3 live LoRA scaffolds (rank 8, holding, so
every gate is measured: probe loss, G1 by a probe pass with the simulated exit, G3 at the site, G4's
jitter, drift and diversity, G5) and `--probe-batches` probe batches, it runs a few training steps
and then times one boundary, `--boundaries` times; it prints the median wall and CPU time of a
boundary and how many probe batches went through the whole model per boundary. The machine's load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from step_overhead import make_model  # benchmarks/step_overhead.py, beside this script: the same model

from kasmina_worker import KasminaWorker
from narset.v1 import command_pb2

SITES = ("0", "2", "4")  # Linears of the model: the first, one in the middle, one further down
STEPS_BETWEEN = 5


def batches(count: int, size: int, width: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, width, generator=generator), torch.randint(0, 10, (size,), generator=generator))
        for _ in range(count)
    ]


def live_worker(args: argparse.Namespace, scaffolds: int) -> tuple[KasminaWorker, torch.optim.Optimizer]:
    """A worker with `scaffolds` live LoRA scaffolds, holding for longer than the run, and a probe set."""
    torch.manual_seed(0)
    model = make_model(args.width, args.depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    probe = batches(args.probe_batches, args.probe_batch, args.width, seed=1)
    worker = KasminaWorker(model, optimizer, job=f"boundary-{scaffolds}", probe=probe, loss_fn=F.cross_entropy)
    policy = command_pb2.ScaffoldPolicy(
        ttl_ckpts=1000, schedule=command_pb2.AlphaSchedule(warmup_ckpts=1, hold_ckpts=999, decay_ckpts=0)
    )
    for site in SITES[:scaffolds]:
        action = command_pb2.DeployAction(module=site, blueprint="lora", blueprint_params={"rank": 8}, policy=policy)
        worker.submit(command_pb2.AdaptationCommand(deploy=action))
    worker.checkpoint(step=0)
    assert len(worker.scaffolds) == scaffolds, "every scaffold must deploy"
    return worker, optimizer


def time_boundaries(args: argparse.Namespace, scaffolds: int) -> tuple[float, float, float]:
    """Median wall ms, median CPU ms and probe batches through the whole model, per boundary."""
    worker, optimizer = live_worker(args, scaffolds)
    data = batches(STEPS_BETWEEN, 256, args.width, seed=2)
    passes = []
    handle = worker.model.register_forward_pre_hook(lambda module, inputs: passes.append(1))
    walls, cpus, counts = [], [], []
    step = 0
    for _ in range(args.boundaries):
        for x, y in data:
            loss = worker.step_loss(F.cross_entropy(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        passes.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        worker.checkpoint(step=step)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        counts.append(len(passes))
    handle.remove()
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3, statistics.median(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--probe-batch", type=int, default=64)
    parser.add_argument("--probe-batches", type=int, default=20)
    parser.add_argument("--boundaries", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {os.cpu_count()} cores")
    print(
        f"model: {args.depth} x Linear({args.width}, {args.width}) + GELU, head; Adam; probe: "
        f"{args.probe_batches} batches of {args.probe_batch}; rank-8 LoRA scaffolds holding; local mode"
    )
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(
        f"\n{'live scaffolds':>15s} {'wall ms':>10s} {'CPU ms':>10s} {'probe batches':>14s}   (per boundary, medians)"
    )
    for scaffolds in (0, 1, 3):
        wall, cpu, count = time_boundaries(args, scaffolds)
        print(f"{scaffolds:>15d} {wall:>10.1f} {cpu:>10.1f} {count:>14.0f}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
