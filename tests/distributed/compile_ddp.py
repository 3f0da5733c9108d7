"""torch.compile(DDP(model)) through a scaffold's life: no recompile between boundaries over 100
steps with alpha changing at every boundary; exactly one compile per structural change."""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dist_testing import (
    MLP,
    all_ranks_equal,
    batch,
    deploy,
    module_tensors,
    on,
    release_process_group,
    schedule,
    write_result,
)
from torch._dynamo.backends.registry import lookup_backend
from torch.nn.parallel import DistributedDataParallel as DDP

from kasmina_worker import KasminaWorker
from narset.v1 import command_pb2, telemetry_pb2

STEPS, EVERY, FOLD_AT = 100, 5, 17
compiles = 0


def counting_backend(gm, example_inputs):
    """aot_eager, counting every graph it compiles."""
    global compiles
    compiles += 1
    return lookup_backend("aot_eager")(gm, example_inputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    # One graph per compile: DDPOptimizer would split the graph at bucket boundaries.
    torch._dynamo.config.optimize_ddp = False
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    worker = KasminaWorker(
        model, optimizer, job="compile", wrap=lambda m: torch.compile(DDP(m), backend=counting_backend)
    )
    policy = schedule(isolated_ckpts=1, warmup_ckpts=8, decay_ckpts=8)
    policy.host_mode = command_pb2.HOST_MODE_FROZEN  # freezing and weaning are structural changes too
    worker.submit(deploy("fc1", "lora", command_id="d1", blueprint_params={"rank": 4}, policy=policy))
    structural, alphas, boundary, fresh = 0, [], 0, True
    for step in range(STEPS):
        if step % EVERY == 0:
            boundary += 1
            if boundary == FOLD_AT:
                worker.submit(on("fold", command_id="f1", scaffold_id="d1"))
            version, rebuilds = worker._runtime.structure_version, worker.rebuilds
            summary = worker.checkpoint(step=step)
            assert all(r.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED for r in summary.results)
            structural += worker._runtime.structure_version != version
            fresh = fresh or worker.rebuilds != rebuilds
            alphas.append(next((s.alpha for s in summary.scaffolds if s.scaffold_id == "d1"), None))
            assert not all_ranks_equal(module_tensors(model))
        # The one compile a rebuild allows happens at its first forward; every other step runs
        # under fail_on_recompile (alpha changes included).
        stance = contextlib.nullcontext() if fresh else torch.compiler.set_stance("fail_on_recompile")
        fresh = False
        with stance:
            x, y = batch(step, rank)
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    write_result(
        args.out,
        {"compiles": compiles, "structural": structural, "rebuilds": worker.rebuilds, "alphas": alphas},
    )


if __name__ == "__main__":
    main()
    release_process_group()
