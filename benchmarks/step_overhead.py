"""Training-step overhead of Kasmina, measured side by side on the same inputs.

    python benchmarks/step_overhead.py [--width 512] [--depth 4] [--batch 256] [--repeats 15]

Prints, with finely interleaved repeated timing (candidates alternate every `--inner` steps, so
machine drift hits all alike; the median over `--repeats` rounds):
1. the untouched model vs `worker.model` with nothing deployed (target 1.00x);
2. a scaffolded model (LoRA, weaning: host and seed both train) trained through the worker
   (`step_loss` included) vs a hand-written module computing the same host + seed + lerp
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
    """What a scaffold computes, written by hand: lerp(h, h.detach() + scaling·B·A·x, alpha)."""

    def __init__(self, host: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float, alpha: float) -> None:
        super().__init__()
        self.host = host
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(b.clone())
        self.scaling = scaling
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.host(x)
        s = h.detach() + F.linear(F.linear(x, self.a), self.b) * self.scaling
        return torch.lerp(h, s, self.alpha)


def step_fn(model: nn.Module, optimizer, x, y, loss_hook: Callable = lambda loss: loss) -> Callable[[], None]:
    def step() -> None:
        loss = loss_hook(F.cross_entropy(model(x), y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def interleaved(steps: dict[str, Callable[[], None]], repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per step of each candidate, timing them in alternation."""
    for fn in steps.values():
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


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
    parser.add_argument("--repeats", type=int, default=150)
    parser.add_argument("--inner", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"model: {args.depth} x Linear({args.width}, {args.width}) + GELU, head; batch {args.batch}; Adam")

    # 1. idle worker vs untouched model.
    base = make_model(args.width, args.depth)
    idle = copy.deepcopy(base)
    opt_base = torch.optim.Adam(base.parameters(), lr=1e-4)
    opt_idle = torch.optim.Adam(idle.parameters(), lr=1e-4)
    worker_idle = KasminaWorker(idle, opt_idle, job="bench-idle")
    times = interleaved(
        {
            "untouched": step_fn(base, opt_base, x, y),
            "idle worker": step_fn(worker_idle.model, opt_idle, x, y, worker_idle.step_loss),
        },
        args.repeats,
        args.inner,
    )
    print("\n1. nothing deployed (target 1.00x)")
    print(f"   untouched model     {times['untouched'] * 1e3:8.3f} ms/step")
    ratio = times["idle worker"] / times["untouched"]
    print(f"   worker.model        {times['idle worker'] * 1e3:8.3f} ms/step   ratio {ratio:.3f}x")

    # 2. scaffold vs hand-written blend, both weaning (host and seed train).
    scaffolded = make_model(args.width, args.depth)
    hand = copy.deepcopy(scaffolded)
    opt_s = torch.optim.Adam(scaffolded.parameters(), lr=1e-4)
    worker = KasminaWorker(scaffolded, opt_s, job="bench")
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
    worker.checkpoint(step=1)  # now weaning: alpha < warm, isolation 0
    scaffold = worker.scaffolds["local-1"]
    nn.init.normal_(scaffold.seed.b, std=0.01)
    hand[2] = HandBlend(
        hand[2], scaffold.seed.a.detach(), scaffold.seed.b.detach(), scaffold.seed.scaling, float(scaffold.alpha)
    )
    opt_h = torch.optim.Adam(hand.parameters(), lr=1e-4)
    with torch.no_grad():
        assert torch.allclose(hand(x), scaffolded(x), atol=1e-6), "hand-written reference must compute the same"
    times = interleaved(
        {
            "hand": step_fn(hand, opt_h, x, y),
            "scaffold": step_fn(worker.model, opt_s, x, y, worker.step_loss),
        },
        args.repeats,
        args.inner,
    )
    print(
        f"\n2. one live LoRA scaffold (rank {args.rank}, weaning, alpha {float(scaffold.alpha):.3f}) (target <= 1.03x)"
    )
    print(f"   hand-written blend  {times['hand'] * 1e3:8.3f} ms/step")
    ratio = times["scaffold"] / times["hand"]
    print(f"   Kasmina scaffold    {times['scaffold'] * 1e3:8.3f} ms/step   ratio {ratio:.3f}x")

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
