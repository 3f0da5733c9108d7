"""LR schedulers across deploys and exits: seed rates follow their host group's, state survives a resume."""

from __future__ import annotations

import copy
import inspect
import io
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MLP, batch, deploy, on
from torch.optim import lr_scheduler as torch_schedulers
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from kasmina_worker import KasminaWorker
from kasmina_worker.runtime.optim import GROUP_KEY
from narset.v1 import command_pb2, telemetry_pb2

LR_SCALE = 0.5
STEPS = 48
EVERY = 4  # steps per boundary
# Boundary -> command: a fold of the first scaffold, then a second deploy on the other layer, pruned.
COMMANDS = {
    1: deploy("fc1", "lora", "d1", blueprint_params={"rank": 2}, policy=command_pb2.ScaffoldPolicy(lr_scale=LR_SCALE)),
    3: on("fold", "f1", scaffold_id="d1"),
    4: deploy("fc2", "lora", "d2", blueprint_params={"rank": 2}, policy=command_pb2.ScaffoldPolicy(lr_scale=LR_SCALE)),
    6: on("prune", "p2", scaffold_id="d2"),
}

Factory = Callable[[torch.optim.Optimizer], torch_schedulers.LRScheduler]
SCHEDULERS: dict[str, Factory] = {
    "LambdaLR": lambda o: torch_schedulers.LambdaLR(o, lambda e: 0.95**e),
    "MultiplicativeLR": lambda o: torch_schedulers.MultiplicativeLR(o, lambda e: 0.97),
    "StepLR": lambda o: torch_schedulers.StepLR(o, step_size=3, gamma=0.7),
    "MultiStepLR": lambda o: torch_schedulers.MultiStepLR(o, milestones=[5, 12, 20], gamma=0.5),
    "ConstantLR": lambda o: torch_schedulers.ConstantLR(o, factor=0.5, total_iters=8),
    "LinearLR": lambda o: torch_schedulers.LinearLR(o, start_factor=0.1, total_iters=10),
    "ExponentialLR": lambda o: torch_schedulers.ExponentialLR(o, gamma=0.97),
    "PolynomialLR": lambda o: torch_schedulers.PolynomialLR(o, total_iters=40, power=2.0),
    "CosineAnnealingLR": lambda o: torch_schedulers.CosineAnnealingLR(o, T_max=15, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda o: torch_schedulers.CosineAnnealingWarmRestarts(
        o, T_0=5, T_mult=2, eta_min=1e-4
    ),
    "CyclicLR": lambda o: torch_schedulers.CyclicLR(o, base_lr=1e-3, max_lr=[1e-2, 5e-3], step_size_up=4),
    "OneCycleLR": lambda o: torch_schedulers.OneCycleLR(o, max_lr=[1e-2, 5e-3], total_steps=STEPS + 2),
    "SequentialLR": lambda o: torch_schedulers.SequentialLR(
        o,
        [torch_schedulers.LinearLR(o, start_factor=0.2, total_iters=5), torch_schedulers.ExponentialLR(o, 0.95)],
        milestones=[5],
    ),
    "ChainedScheduler": lambda o: torch_schedulers.ChainedScheduler(
        [torch_schedulers.ConstantLR(o, factor=0.5, total_iters=4), torch_schedulers.ExponentialLR(o, gamma=0.95)]
    ),
    "ReduceLROnPlateau": lambda o: torch_schedulers.ReduceLROnPlateau(o, factor=0.5, patience=1),
    "hf_linear_warmup": lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=5, num_training_steps=STEPS),
    "hf_cosine_warmup": lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=5, num_training_steps=STEPS),
}


def _optimizer(model: MLP) -> torch.optim.Optimizer:
    """Two groups at different rates, so that a seed must follow its own host's group."""
    groups = [{"params": list(model.fc1.parameters())}, {"params": list(model.fc2.parameters()), "lr": 5e-3}]
    return torch.optim.Adam(groups, lr=1e-2)


def _step_scheduler(scheduler: torch_schedulers.LRScheduler, step: int) -> None:
    if isinstance(scheduler, torch_schedulers.ReduceLROnPlateau):
        scheduler.step(1.0)  # a flat metric: the plateau cuts the rate every `patience + 1` steps
    else:
        scheduler.step()


def _train_step(worker: KasminaWorker, optimizer: torch.optim.Optimizer, step: int) -> None:
    x, y = batch(step, (8, 12), 6)
    loss = worker.step_loss(F.mse_loss(worker.model(x), y))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _seed_rates(optimizer: torch.optim.Optimizer, worker: KasminaWorker) -> list[tuple[float, float]]:
    """(seed group rate, its host group's rate) for each live scaffold."""
    rates = []
    for group in optimizer.param_groups:
        if GROUP_KEY in group:
            host = worker.scaffolds[group[GROUP_KEY]].host.weight
            host_group = next(g for g in optimizer.param_groups if any(p is host for p in g["params"]))
            rates.append((group["lr"], host_group["lr"]))
    return rates


def test_every_torch_scheduler_is_covered():
    """The parametrised test below runs every scheduler class torch.optim.lr_scheduler exports."""
    exported = {
        name
        for name, cls in vars(torch_schedulers).items()
        if inspect.isclass(cls) and issubclass(cls, torch_schedulers.LRScheduler) and not name.startswith("_")
    }
    assert exported - {"LRScheduler"} <= set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_drives_seed_groups_through_deploy_fold_deploy_prune(name):
    """No error; at every step each seed group's rate is its host group's times lr_scale, and the host groups'
    rates are those of the same scheduler on an optimiser that never had a scaffold."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = _optimizer(model)
    scheduler = SCHEDULERS[name](optimizer)
    twin = _optimizer(copy.deepcopy(model))
    twin_scheduler = SCHEDULERS[name](twin)
    worker = KasminaWorker(model, optimizer, job="sched", scheduler=scheduler)
    steps_with_seed, applied = 0, []
    for step in range(STEPS):
        _train_step(worker, optimizer, step)
        twin.step()
        for seed_lr, host_lr in _seed_rates(optimizer, worker):
            assert seed_lr == host_lr * LR_SCALE, (step, seed_lr, host_lr)
            steps_with_seed += 1
        assert [g["lr"] for g in optimizer.param_groups[:2]] == [g["lr"] for g in twin.param_groups], step
        _step_scheduler(scheduler, step)
        _step_scheduler(twin_scheduler, step)
        if step % EVERY == EVERY - 1:
            boundary = worker.boundary + 1
            if boundary in COMMANDS:
                worker.submit(COMMANDS[boundary])
            results = worker.checkpoint(step=step).results
            applied += [r.command_id for r in results if r.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED]
    assert {"d1", "f1", "d2", "p2"} <= set(applied)
    assert steps_with_seed >= 3 * EVERY and not worker.scaffolds and len(optimizer.param_groups) == 2


def _run(resume_at: int | None) -> tuple[dict, list[float]]:
    """Train with a LambdaLR and a live scaffold; with `resume_at`, save every state at that boundary and go
    on in freshly built objects loaded in the documented order. Returns the final weights and seed rates."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = _optimizer(model)
    scheduler = torch_schedulers.LambdaLR(optimizer, lambda e: 0.9**e)
    worker = KasminaWorker(model, optimizer, job="resume", scheduler=scheduler)
    worker.submit(COMMANDS[1])
    seed_rates = []
    for step in range(24):
        _train_step(worker, optimizer, step)
        seed_rates += [seed for seed, _ in _seed_rates(optimizer, worker)]
        scheduler.step()
        if step % EVERY != EVERY - 1:
            continue
        worker.checkpoint(step=step)
        if worker.boundary == resume_at:
            saved = io.BytesIO()
            state = [worker.state_dict(), model.state_dict(), optimizer.state_dict(), scheduler.state_dict()]
            torch.save(state, saved)
            saved.seek(0)
            worker_state, model_state, optimizer_state, scheduler_state = torch.load(saved, weights_only=True)
            torch.manual_seed(1)
            model = MLP()
            optimizer = _optimizer(model)
            scheduler = torch_schedulers.LambdaLR(optimizer, lambda e: 0.9**e)
            worker = KasminaWorker(model, optimizer, job="resume", scheduler=scheduler)
            worker.load_state_dict(worker_state)
            model.load_state_dict(model_state, strict=True)
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(scheduler_state)
    assert worker.scaffolds
    return model.state_dict(), seed_rates


def test_scheduler_state_round_trips_through_a_resume():
    """A run resumed mid-scaffold (worker, model, optimiser, then scheduler state) ends bit-identical to the
    uninterrupted one, seed rates included."""
    straight_weights, straight_rates = _run(resume_at=None)
    resumed_weights, resumed_rates = _run(resume_at=3)
    assert resumed_rates == straight_rates
    assert straight_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(straight_weights[k], resumed_weights[k]) for k in straight_weights)
