"""Training-step overhead of Kasmina, measured like with like in the same paired rounds.

    python benchmarks/step_overhead.py [--widths 512 1024] [--depth 4] [--batch 256] [--rank 16]
                                       [--rounds 200] [--compile] [--threads N [--cpu-time]]

At each width, one model (depth x Linear(width, width) + GELU, a head; Adam, the host at full
gradient) is trained in six forms, each with its own copy of the weights and its own optimiser:

* `untouched`: the plain model; `idle worker`: `worker.model` with nothing deployed (target 1.00x);
* `hand-written`: a module computing what a live LoRA scaffold computes, `h + alpha·scaling·B·A·x`,
  with no safety at all (the reference);
* `PEFT LoRA`: PEFT's `lora.Linear` on the same layer, same rank and factors, its scaling set to
  `alpha·scaling` so that it computes the same function, base layer unfrozen (the peer);
* `Kasmina`: the live scaffold trained through the worker (`step_loss`, the breakers, the seed
  guard on the optimiser step), target <= 1.03x eager and <= 1.02x compiled;
* `Kasmina, breakers off`: the same scaffold module trained without `step_loss` and with an
  optimiser the worker does not guard: the blend's own cost.

Every round runs one training step of each form, in an order rotated from round to round, so
machine drift and cache state hit all alike; ratios are medians of the per-round ratios (with
their interquartile range), extra ms/step the median of the per-round differences. The machine's
load average is printed before and after. Then the memory of one live scaffold vs its seed's
parameters, gradients and optimiser state.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from kasmina_worker import KasminaWorker
from narset.v1 import command_pb2

SITE = "2"  # the second Linear: layers upstream and downstream of the scaffold


def make_model(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


class HandBlend(nn.Module):
    """What a scaffold computes, written by hand with no safety: h + alpha·scaling·B·A·x."""

    def __init__(self, host: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float, alpha: float) -> None:
        super().__init__()
        self.host = host
        self.a = nn.Parameter(a.clone())
        self.b = nn.Parameter(b.clone())
        self.scaling = scaling
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.host(x) + self.alpha * (F.linear(F.linear(x, self.a), self.b) * self.scaling)


def peft_lora(model: nn.Sequential, a: torch.Tensor, b: torch.Tensor, scaling: float) -> nn.Sequential:
    """PEFT's LoRA layer on the site with these factors and scaling; every parameter trains."""
    inject_adapter_in_model(LoraConfig(r=a.shape[0], lora_alpha=a.shape[0], target_modules=[SITE]), model)
    layer = model[int(SITE)]
    layer.scaling["default"] = scaling
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    model.requires_grad_(True)  # PEFT freezes the base model; the scaffold's host trains
    return model


def deploy_lora(worker: KasminaWorker, rank: int) -> None:
    """A live LoRA scaffold on the site, weaning (alpha below its warm level), host and seed training."""
    policy = command_pb2.ScaffoldPolicy(
        ttl_ckpts=101, schedule=command_pb2.AlphaSchedule(warmup_ckpts=1, hold_ckpts=0, decay_ckpts=100)
    )
    action = command_pb2.DeployAction(module=SITE, blueprint="lora", blueprint_params={"rank": rank}, policy=policy)
    worker.submit(command_pb2.AdaptationCommand(deploy=action))
    worker.checkpoint(step=0)
    worker.checkpoint(step=1)


def step_fn(model: nn.Module, optimizer, x, y, loss_hook: Callable = lambda loss: loss) -> Callable[[], None]:
    def step() -> None:
        loss = loss_hook(F.cross_entropy(model(x), y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@dataclass(frozen=True)
class Ratio:
    """Per-round ratio and difference of a candidate's step time to a reference's."""

    ratio: float
    q1: float
    q3: float
    extra_s: float


def time_rounds(
    steps: dict[str, Callable[[], None]], rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """One step of every candidate per round, the order rotated each round; seconds per step."""
    names = list(steps)
    for name in names:
        for _ in range(5):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            steps[name]()
            times[name].append(clock() - start)
    return times


def ratio(times: dict[str, list[float]], candidate: str, reference: str) -> Ratio:
    pairs = list(zip(times[reference], times[candidate], strict=True))
    q1, median, q3 = statistics.quantiles([c / r for r, c in pairs], n=4)
    return Ratio(median, q1, q3, statistics.median(c - r for r, c in pairs))


def print_ratio(label: str, result: Ratio) -> None:
    print(
        f"   {label:40s} {result.ratio:.3f}x (interquartile {result.q1:.3f}-{result.q3:.3f}), "
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


def print_memory(worker: KasminaWorker, optimizer: torch.optim.Optimizer, width: int, depth: int, x, y) -> None:
    """The extra memory of the live scaffold vs its seed's parameters + gradients + Adam state."""
    plain = make_model(width, depth)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-4)
    step_fn(plain, opt_plain, x, y)()
    scaffolded = worker.model
    extra = persistent_bytes(scaffolded, optimizer) - persistent_bytes(plain, opt_plain)
    seed_params = list(worker.scaffolds["local-1"].seed.parameters())
    seed_bytes = tensor_bytes(seed_params) + tensor_bytes(p.grad for p in seed_params)
    seed_bytes += tensor_bytes(v for p in seed_params for v in optimizer.state[p].values())
    act_extra = saved_for_backward_bytes(scaffolded, x, y) - saved_for_backward_bytes(plain, x, y)
    print(f"\n   memory of the live scaffold at width {width}")
    print(f"   seed params + grads + Adam state      {seed_bytes / 2**10:10.1f} KiB")
    print(f"   extra persistent tensors (measured)   {extra / 2**10:10.1f} KiB   ratio {extra / seed_bytes:.3f}x")
    print(f"   extra tensors saved for backward/step {act_extra / 2**10:10.1f} KiB (activations at the site)")


def run_width(args: argparse.Namespace, width: int, memory: bool) -> float:
    """The paired rounds at one width; returns Kasmina's extra seconds per step over the hand-written blend."""
    torch.manual_seed(0)
    x = torch.randn(args.batch, width)
    y = torch.randint(0, 10, (args.batch,))
    wrap = torch.compile if args.compile else None
    base = make_model(width, args.depth)

    def own(model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, torch.optim.Adam(model.parameters(), lr=1e-4)

    def worker_of(model: nn.Module, optimizer: torch.optim.Optimizer) -> KasminaWorker:
        return KasminaWorker(model, optimizer, job=f"bench-{id(model)}", wrap=wrap)

    untouched, opt_untouched = own(copy.deepcopy(base))
    idle, opt_idle = own(copy.deepcopy(base))
    idle_worker = worker_of(idle, opt_idle)
    live, opt_live = own(copy.deepcopy(base))
    worker = worker_of(live, opt_live)
    deploy_lora(worker, args.rank)
    scaffold = worker.scaffolds["local-1"]
    nn.init.normal_(scaffold.seed.b, std=0.01)  # a non-zero delta, so that the forms are told apart
    seed, alpha = scaffold.seed, float(scaffold.alpha)
    # The scaffold module, trained by an optimiser the worker does not hook.
    unguarded, opt_unguarded = own(copy.deepcopy(live))
    hand = copy.deepcopy(base)
    hand[int(SITE)] = HandBlend(hand[int(SITE)], seed.a.detach(), seed.b.detach(), seed.scaling, alpha)
    hand, opt_hand = own(hand)
    peer, opt_peer = own(peft_lora(copy.deepcopy(base), seed.a.detach(), seed.b.detach(), alpha * seed.scaling))
    with torch.no_grad():
        expected = hand(x)
        for model in (live, unguarded, peer):
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)

    def compiled(model: nn.Module) -> nn.Module:
        return wrap(model) if wrap else model

    steps = {
        "untouched": step_fn(compiled(untouched), opt_untouched, x, y),
        "idle worker": step_fn(idle_worker.model, opt_idle, x, y, idle_worker.step_loss),
        "hand-written": step_fn(compiled(hand), opt_hand, x, y),
        "PEFT LoRA": step_fn(compiled(peer), opt_peer, x, y),
        "Kasmina": step_fn(worker.model, opt_live, x, y, worker.step_loss),
        "Kasmina, breakers off": step_fn(compiled(unguarded), opt_unguarded, x, y),
    }
    times = time_rounds(steps, args.rounds, time.thread_time if args.cpu_time else time.perf_counter)
    print(f"\nwidth {width}: rank-{args.rank} LoRA at alpha {alpha:.3f}, {args.rounds} rounds")
    for name, samples in times.items():
        print(f"   {name:24s}{statistics.median(samples) * 1e3:9.3f} ms/step")
    kasmina = ratio(times, "Kasmina", "hand-written")
    print_ratio("idle worker / untouched (target 1.00x)", ratio(times, "idle worker", "untouched"))
    target = "1.02x" if args.compile else "1.03x"
    print_ratio(f"Kasmina / hand-written (target <= {target})", kasmina)
    print_ratio("Kasmina / PEFT LoRA (target <= 1.00x)", ratio(times, "Kasmina", "PEFT LoRA"))
    print_ratio("Kasmina, breakers off / hand-written", ratio(times, "Kasmina, breakers off", "hand-written"))
    print_ratio("Kasmina / Kasmina, breakers off (safety)", ratio(times, "Kasmina", "Kasmina, breakers off"))
    print_ratio("PEFT LoRA / hand-written", ratio(times, "PEFT LoRA", "hand-written"))
    if memory:
        print_memory(worker, opt_live, width, args.depth, x, y)
    return kasmina.extra_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--compile", action="store_true", help="torch.compile every form (the worker via wrap=)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time steps by this thread's CPU time, so that waits for a core on a loaded machine do not count "
        "(needs --threads 1: torch's work then runs on this thread)",
    )
    args = parser.parse_args()
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time needs --threads 1")
    if args.threads:
        # On a loaded machine one thread per process keeps intra-op threads from waiting on each other.
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {os.cpu_count()} cores")
    print(f"model: {args.depth} x Linear(width, width) + GELU, head; batch {args.batch}; Adam")
    print("compiled: " + ("yes (torch.compile; the worker's via wrap=)" if args.compile else "no (eager)"))
    print("clock: " + ("this thread's CPU time" if args.cpu_time else "wall (perf_counter)"))
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    extras = [run_width(args, width, memory=i == 0) for i, width in enumerate(args.widths)]
    if len(extras) == 2:
        (first, second), (small, large) = args.widths, extras
        verdict = "holds" if large <= 1.5 * small else "misses"
        print(
            f"\nKasmina's extra: {large * 1e3:+.3f} ms/step at width {second}, {small * 1e3:+.3f} at width {first} "
            f"(target: at most 1.5 times it, {1.5 * small * 1e3:+.3f}): {verdict}"
        )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
