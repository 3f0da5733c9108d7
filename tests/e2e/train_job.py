"""A real training job for the end-to-end tests, driven line by line by its parent test.

Full-batch training on a fixed synthetic classification set, so the step loss is smooth and a
resumed run computes exactly what an uninterrupted one does.

After every boundary it prints one JSON line (the boundary's summary) and waits for one line on
stdin: `next` trains on to the next boundary, `save` saves a checkpoint first, `stop` detaches and
exits 0. The parent kills it with SIGKILL to simulate a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kasmina_worker import BuildContext, KasminaWorker, Seed, WorkerConfig, register_blueprint
from narset.v1 import command_pb2, job_pb2, telemetry_pb2

BATCH, FEATURES, CLASSES = 256, 16, 4
TRAIN_SEED, PROBE_SEED = 1000, 2000


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class NoisySeed(Seed):
    """A harmful seed for the PRUNE path: the host's output plus fresh noise at every forward."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        return host_out.detach() + self.scale * torch.randn_like(host_out)


@register_blueprint(
    job_pb2.Blueprint(
        name="noisy",
        description="test blueprint: injects noise at the site",
        host_types=["Linear"],
        size_class=job_pb2.SIZE_CLASS_MICRO,
        folds=[job_pb2.FOLD_KIND_TRANSFER],
        default_policy=command_pb2.ScaffoldPolicy(
            ttl_ckpts=4, schedule=command_pb2.AlphaSchedule(warmup_ckpts=1, hold_ckpts=3)
        ),
        params=[job_pb2.BlueprintParam(name="scale", default_value=3.0, min=0.0, max=100.0)],
        default_learning_rate=1e-3,
    )
)
def build_noisy(ctx: BuildContext) -> Seed:
    return NoisySeed(ctx.params["scale"])


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, FEATURES, generator=generator)
    return x, (x[:, :CLASSES] * 2 + x[:, CLASSES : 2 * CLASSES]).argmax(dim=1)


class Steps(Dataset):
    """The training batch once per step, built in the DataLoader workers (forked) when there are any."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return batch(TRAIN_SEED)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--narset", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps-per-boundary", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (fork start method)")
    parser.add_argument("--timeout", type=float, default=5.0, help="Narset timeout per boundary call")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = [batch(PROBE_SEED)]
    worker = KasminaWorker(
        model,
        optimizer,
        job=args.job,
        narset=args.narset,
        probe=probe,
        loss_fn=nn.functional.cross_entropy,
        regions={"body": ["fc1", "fc2"], "head": ["head"]},
        config=WorkerConfig(narset_timeout_s=args.timeout),
    )
    step = 0
    if args.resume:
        saved = torch.load(args.ckpt, weights_only=True)
        worker.load_state_dict(saved["worker"])
        model.load_state_dict(saved["model"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]
    context = "fork" if args.workers else None
    while True:
        loader = DataLoader(
            Steps(args.steps_per_boundary),
            batch_size=None,
            num_workers=args.workers,
            multiprocessing_context=context,
        )
        for x, y in loader:
            loss = worker.step_loss(nn.functional.cross_entropy(worker.model(x), y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        probe_x = probe[0][0]
        with torch.no_grad():
            before = worker.model(probe_x) if worker.scaffolds else None
        started = time.monotonic()
        summary = worker.checkpoint(step=step, metrics={"train_loss": float(loss)})
        elapsed = time.monotonic() - started
        parity = None
        if before is not None and any(s.stage == "SCAFFOLD_STAGE_FUSED" for s in summary.scaffolds):
            with torch.no_grad():
                after = worker.model(probe_x)
            parity = float((after - before).abs().max() / before.abs().max())
        print(
            json.dumps(
                {
                    "boundary": summary.boundary,
                    "step": step,
                    "elapsed_s": elapsed,
                    "fold_parity": parity,
                    "probe_loss": summary.probe_loss,
                    "scaffolds": [
                        {"id": s.scaffold_id, "module": s.module, "stage": s.stage, "alpha": s.alpha}
                        for s in summary.scaffolds
                    ],
                    "results": [
                        {"id": r.command_id, "outcome": telemetry_pb2.CommandOutcome.Name(r.outcome), "msg": r.message}
                        for r in summary.results
                    ],
                    "gates": {sid: [f.name for f, _ in g.ListFields()] for sid, g in summary.gates.items()},
                    "applied": list(worker.applied_command_ids),
                    "module_types": {name: type(m).__name__ for name, m in model.named_children()},
                }
            ),
            flush=True,
        )
        order = sys.stdin.readline().strip()
        if order == "save":
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            state["worker"] = worker.state_dict()
            torch.save(state, args.ckpt)
        elif order == "stop" or not order:
            torch.save(model.state_dict(), args.ckpt.with_suffix(".final"))
            worker.close()
            return


if __name__ == "__main__":
    main()
