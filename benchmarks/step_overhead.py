"""Training-step overhead of Kasmina, measured side by side on the same inputs.

    python benchmarks/step_overhead.py [--width 512] [--depth 4] [--batch 256] [--rounds 400] [--compile]

Prints, timed side by side (each round runs one training step of both candidates, alternating
which goes first, so machine drift and cache state hit both alike; ratios are the median of the
per-round ratios, with their interquartile range):
1. the untouched model vs `worker.model` with nothing deployed (target 1.00x);
2. a scaffolded model (LoRA: host and seed both train) trained through the worker
   (`step_loss` included) vs a hand-written module computing the same host + alpha·seed
   (target <= 1.03x);
3. the extra memory of a live scaffold (persistent tensors, and tensors saved for backward per
   step) vs its seed's parameters + gradients + optimiser state.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kasmina_worker import KasminaWorker
from narset.v1 import command_pb2


def make_model(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class HandBlend(nn.Module):
    """What a scaffold computes, written by hand: h + alpha·scaling·B·A·x."""

    def __init__(self, host: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float, alpha: float) -> None:
        super().__init__()
        self.host = host
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(b.clone())
        self.scaling = scaling
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.host(x) + self.alpha * (F.linear(F.linear(x, self.a), self.b) * self.scaling)


def step_fn(model: nn.Module, optimizer, x, y, loss_hook: Callable = lambda loss: loss) -> Callable[[], None]:
    def step() -> None:
        loss = loss_hook(F.cross_entropy(model(x), y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@dataclass(frozen=True)
class Paired:
    """Side-by-side step times of a reference and a candidate, one step of each per round."""

    reference_s: float
    candidate_s: float
    extra_s: float
    ratio: float
    ratio_q1: float
    ratio_q3: float


def paired(reference: Callable[[], None], candidate: Callable[[], None], rounds: int) -> Paired:
    """Time one step of each per round, alternating which goes first (ABBA), so drift and cache
    state hit both alike; the ratio is the median of the per-round ratios."""
    for fn in (reference, candidate):
        for _ in range(5):
            fn()
    ref, cand = [], []
    for i in range(rounds):
        order = ((ref, reference), (cand, candidate))
        for samples, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    q1, median, q3 = statistics.quantiles([c / r for r, c in zip(ref, cand, strict=True)], n=4)
    extra = statistics.median(c - r for r, c in zip(ref, cand, strict=True))
    return Paired(statistics.median(ref), statistics.median(cand), extra, median, q1, q3)


def print_pair(reference: str, candidate: str, result: Paired) -> None:
    print(f"   {reference:20s}{result.reference_s * 1e3:8.3f} ms/step")
    print(
        f"   {candidate:20s}{result.candidate_s * 1e3:8.3f} ms/step   "
        f"ratio {result.ratio:.3f}x (interquartile {result.ratio_q1:.3f}-{result.ratio_q3:.3f}), "
        f"{result.extra_s * 1e3:+.3f} ms/step"
    )


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def persistent_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def saved_for_backward_bytes(model: nn.Module, x, y) -> int:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    del loss
    return tensor_bytes(t for t in saved if t.untyped_storage().data_ptr() not in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (the worker via wrap=)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"model: {args.depth} x Linear({args.width}, {args.width}) + GELU, head; batch {args.batch}; Adam")
    wrap = torch.compile if args.compile else None
    print("compiled: " + ("yes (torch.compile; the worker rebuilds its wrap after surgery)" if wrap else "no (eager)"))

    # 1. idle worker vs untouched model.
    base = make_model(args.width, args.depth)
    idle = copy.deepcopy(base)
    opt_base = torch.optim.Adam(base.parameters(), lr=1e-4)
    opt_idle = torch.optim.Adam(idle.parameters(), lr=1e-4)
    worker_idle = KasminaWorker(idle, opt_idle, job="bench-idle", wrap=wrap)
    idle_step = step_fn(worker_idle.model, opt_idle, x, y, worker_idle.step_loss)
    result = paired(step_fn(wrap(base) if wrap else base, opt_base, x, y), idle_step, args.rounds)
    print("\n1. nothing deployed (target 1.00x)")
    print_pair("untouched model", "worker.model", result)

    # 2. scaffold vs hand-written blend (host and seed train).
    scaffolded = make_model(args.width, args.depth)
    hand = copy.deepcopy(scaffolded)
    opt_s = torch.optim.Adam(scaffolded.parameters(), lr=1e-4)
    worker = KasminaWorker(scaffolded, opt_s, job="bench", wrap=wrap)
    policy = command_pb2.ScaffoldPolicy(
        ttl_ckpts=101, schedule=command_pb2.AlphaSchedule(warmup_ckpts=1, hold_ckpts=0, decay_ckpts=100)
    )
    worker.submit(
        command_pb2.AdaptationCommand(
            deploy=command_pb2.DeployAction(
                module="2", blueprint="lora", blueprint_params={"rank": args.rank}, policy=policy
            )
        )
    )
    worker.checkpoint(step=0)
    worker.checkpoint(step=1)  # now weaning: alpha < warm
    scaffold = worker.scaffolds["local-1"]
    nn.init.normal_(scaffold.seed.b, std=0.01)
    hand[2] = HandBlend(
        hand[2], scaffold.seed.a.detach(), scaffold.seed.b.detach(), scaffold.seed.scaling, float(scaffold.alpha)
    )
    opt_h = torch.optim.Adam(hand.parameters(), lr=1e-4)
    with torch.no_grad():
        assert torch.allclose(hand(x), scaffolded(x), atol=1e-6), "hand-written reference must compute the same"
    hand_step = step_fn(wrap(hand) if wrap else hand, opt_h, x, y)
    result = paired(hand_step, step_fn(worker.model, opt_s, x, y, worker.step_loss), args.rounds)
    print(f"\n2. one live LoRA scaffold (rank {args.rank}, alpha {float(scaffold.alpha):.3f}) (target <= 1.03x)")
    print_pair("hand-written blend", "Kasmina scaffold", result)

    # 3. memory of a live scaffold vs its seed's params + grads + optimiser state.
    plain = make_model(args.width, args.depth)
    opt_p = torch.optim.Adam(plain.parameters(), lr=1e-4)
    step_fn(plain, opt_p, x, y)()
    step_fn(worker.model, opt_s, x, y, worker.step_loss)()
    extra = persistent_bytes(scaffolded, opt_s) - persistent_bytes(plain, opt_p)
    seed_params = list(scaffold.seed.parameters())
    seed_bytes = tensor_bytes(seed_params) + tensor_bytes(p.grad for p in seed_params)
    seed_bytes += tensor_bytes(v for p in seed_params for v in opt_s.state[p].values())
    act_extra = saved_for_backward_bytes(scaffolded, x, y) - saved_for_backward_bytes(plain, x, y)
    print("\n3. memory of one live scaffold")
    print(f"   seed params + grads + Adam state      {seed_bytes / 2**10:10.1f} KiB")
    print(f"   extra persistent tensors (measured)   {extra / 2**10:10.1f} KiB   ratio {extra / seed_bytes:.3f}x")
    print(f"   extra tensors saved for backward/step {act_extra / 2**10:10.1f} KiB (activations at the site)")


if __name__ == "__main__":
    main()
