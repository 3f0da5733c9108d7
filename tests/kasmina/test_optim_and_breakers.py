"""Seed parameter groups in the user's optimiser, gradient accumulation, and the safety breakers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MLP, MLP3, batch, deploy, on, result_ok, schedule, train

from kasmina_worker import BreakerConfig, KasminaWorker, WorkerConfig
from kasmina_worker.measure.breakers import TRIP_LOSS_SPIKE, TRIP_NON_FINITE, Breakers, StepLossRing, Trip, Watch
from kasmina_worker.runtime.optim import GROUP_KEY
from narset.v1 import command_pb2


def _worker(lr=1e-2, **kwargs):
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return model, optimizer, KasminaWorker(model, optimizer, job="opt", **kwargs)


def test_seed_group_present_while_live_and_gone_with_its_state_after_exit():
    """Seed params form a named group (lr from the command) while live; group and state leave at exit."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}, learning_rate=3e-3))
    result_ok(worker.checkpoint(step=0))
    seed_params = list(worker.scaffolds["local-1"].seed.parameters())
    groups = [g for g in optimizer.param_groups if g.get(GROUP_KEY) == "local-1"]
    assert len(groups) == 1 and groups[0]["lr"] == 3e-3 and groups[0]["name"] == "kasmina/local-1"
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in seed_params]
    assert all(p not in optimizer.state for p in seed_params)  # fresh seeds get fresh state
    train(worker, optimizer, steps=3)
    assert all("exp_avg" in optimizer.state[p] for p in seed_params)
    worker.submit(on("fold", module="fc1"))
    result_ok(worker.checkpoint(step=3))
    assert len(optimizer.param_groups) == 1
    assert all(p not in optimizer.state for p in seed_params)
    train(worker, optimizer, steps=2, start=3)


def test_seed_group_takes_its_host_groups_hyperparameters_times_lr_scale():
    """A seed group gets the lr (times policy.lr_scale), weight decay and betas of the group holding its host, a
    non-default group with its own lr included; an explicit deploy learning rate still wins."""
    torch.manual_seed(0)
    model = MLP3()
    optimizer = torch.optim.AdamW(
        [
            {"params": [*model.fc1.parameters(), *model.fc3.parameters()]},
            {"params": list(model.fc2.parameters()), "lr": 4e-3, "weight_decay": 0.05, "betas": (0.8, 0.95)},
        ],
        lr=1e-3,
        weight_decay=0.01,
    )
    worker = KasminaWorker(model, optimizer, job="lr")
    scaled = command_pb2.ScaffoldPolicy(lr_scale=0.5)
    worker.submit(deploy("fc2", "lora", command_id="middle", blueprint_params={"rank": 2}, policy=scaled))
    worker.submit(deploy("fc1", "dense_delta", command_id="first"))
    worker.submit(
        deploy("fc3", "lora", command_id="explicit", blueprint_params={"rank": 2}, learning_rate=7e-4, policy=scaled)
    )
    summary = worker.checkpoint(step=0)
    for index in range(3):
        result_ok(summary, index)
    groups = {g[GROUP_KEY]: g for g in optimizer.param_groups if GROUP_KEY in g}
    hyper = {sid: (g["lr"], g["weight_decay"], g["betas"]) for sid, g in groups.items()}
    assert hyper == {
        "middle": (4e-3 * 0.5, 0.05, (0.8, 0.95)),
        "first": (1e-3, 0.01, (0.9, 0.999)),
        "explicit": (7e-4, 0.01, (0.9, 0.999)),
    }
    train(worker, optimizer, steps=3)
    assert all("exp_avg" in optimizer.state[p] for g in groups.values() for p in g["params"])


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_lr_scale_must_be_finite_and_positive(value):
    """A deploy whose policy.lr_scale is not a finite number > 0 is rejected naming the field."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", policy=command_pb2.ScaffoldPolicy(lr_scale=value)))
    (result,) = worker.checkpoint(step=0).results
    assert result.message == f"deploy.policy.lr_scale: must be a finite number > 0, got {value}"
    assert len(optimizer.param_groups) == 1


def test_gradient_accumulation_over_four_micro_batches():
    """Accumulating 4 micro-batches gives the seed and host the full batch's gradient."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 3}, policy=schedule(warmup_ckpts=1, decay_ckpts=4)))
    worker.checkpoint(step=0)
    assert worker.checkpoint(step=0).scaffold("local-1").stage == "SCAFFOLD_STAGE_DECAY"  # seed and host both train
    scaffold = worker.scaffolds["local-1"]
    torch.nn.init.normal_(scaffold.seed.b, std=0.5)
    x, y = batch(0, (16, 12), 6)
    optimizer.zero_grad()
    for xs, ys in zip(x.chunk(4), y.chunk(4), strict=True):
        worker.step_loss(F.mse_loss(worker.model(xs), ys) / 4).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad()
    worker.step_loss(F.mse_loss(worker.model(x), y)).backward()
    assert all(g.abs().sum() > 0 for g in accumulated)
    for got, full in zip(accumulated, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)
    optimizer.step()
    assert worker.step_losses("local-1").numel() == 5


def _host_snapshot(model, optimizer) -> list[torch.Tensor]:
    """Every host parameter and its optimiser state tensors, copied."""
    host = [p for name, p in model.named_parameters() if ".seed." not in name]
    return [t.clone() for p in host for t in (p, *optimizer.state[p].values())]


def _live_lora(make_optimizer, job: str) -> tuple[MLP, torch.optim.Optimizer, KasminaWorker]:
    """A seeded MLP whose fc1 carries a live rank-2 LoRA at alpha 0.5 (applied at boundary 1)."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = make_optimizer(model.parameters())
    worker = KasminaWorker(model, optimizer, job=job)
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=1, hold_ckpts=5)))
    worker.checkpoint(step=0)
    return model, optimizer, worker


def test_nan_in_live_seed_is_cut_then_pruned_and_host_never_sees_it():
    """NaN written into a live seed mid-interval (fused Adam): that step's update is skipped on device, so every host
    parameter and its Adam state stay bit-identical; from the next forward alpha is 0, the seed finite and the site
    output exactly the host's; training goes on finite and the next boundary prunes with the step of the NaN."""
    model, optimizer, worker = _live_lora(lambda params: torch.optim.Adam(params, lr=1e-2, fused=True), job="opt")
    scaffold = worker.scaffolds["local-1"]
    train(worker, optimizer, steps=3)
    assert float(scaffold.alpha) == 0.5
    before = _host_snapshot(model, optimizer)
    with torch.no_grad():
        scaffold.seed.a[0, 0] = float("nan")
    x, y = batch(3, (8, 12), 6)
    loss = worker.step_loss(F.mse_loss(worker.model(x), y))
    optimizer.zero_grad()
    loss.backward()
    assert not all(torch.isfinite(p.grad).all() for p in scaffold.host.parameters())  # the host's grads are NaN
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, _host_snapshot(model, optimizer), strict=True))
    assert float(scaffold.alpha) == 0.0  # the first forward after detection already uses it
    assert all(torch.isfinite(p).all() for p in scaffold.seed.parameters())
    with torch.no_grad():
        assert torch.equal(scaffold(x), scaffold.host(x))
    losses = train(worker, optimizer, steps=4, start=4)
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    summary = worker.checkpoint(step=8)
    assert "local-1" not in worker.scaffolds and model.fc1 is scaffold.host
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_PRUNED"
    assert sorted((e.scaffold_id, e.kind, e.step) for e in summary.events) == [("local-1", "non_finite", 3)] * 2
    assert summary.report.safety_events[0] == summary.events[0]
    assert all(math.isfinite(v) for v in train(worker, optimizer, steps=3, start=8))


def test_non_finite_seed_gradient_never_reaches_a_parameter():
    """A NaN in a live seed's gradient (plain Adam): the update leaves the seed's parameters and Adam state and
    every host parameter finite, alpha is 0 from the next forward (the site output exactly the host's), and the
    next boundary prunes it as non_finite at that step, the loss breaker untouched."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=1, hold_ckpts=5)))
    worker.checkpoint(step=0)
    scaffold = worker.scaffolds["local-1"]
    train(worker, optimizer, steps=3)
    x, y = batch(3, (8, 12), 6)
    loss = worker.step_loss(F.mse_loss(worker.model(x), y))
    poison = scaffold.seed.b.register_hook(lambda grad: grad * math.nan)
    optimizer.zero_grad()
    loss.backward()
    poison.remove()
    assert torch.isnan(scaffold.seed.b.grad).all()
    optimizer.step()
    assert float(scaffold.alpha) == 0.0
    seed_tensors = [t for p in scaffold.seed.parameters() for t in (p, *optimizer.state[p].values())]
    assert all(torch.isfinite(t).all() for t in seed_tensors)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(scaffold(x), scaffold.host(x))
    assert all(math.isfinite(v) for v in train(worker, optimizer, steps=2, start=4))
    summary = worker.checkpoint(step=6)
    assert [(e.scaffold_id, e.kind, e.step, e.detail) for e in summary.events] == [
        ("local-1", "non_finite", 3, "non-finite seed parameter or gradient")
    ]
    assert not worker.scaffolds


def test_grad_scaler_overflow_on_a_fused_optimiser_is_no_seed_fault():
    """Fused Adam under a GradScaler whose scale overflows the gradients: the scaler skips those steps and lowers
    its scale, no seed is cut or pruned, and the seed trains once the scale fits."""
    model, optimizer, worker = _live_lora(lambda params: torch.optim.Adam(params, lr=1e-2, fused=True), job="amp")
    scaffold = worker.scaffolds["local-1"]
    seed_b = scaffold.seed.b.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)
    for step in range(40):
        x, y = batch(step, (8, 12), 6)
        loss = worker.step_loss(F.mse_loss(worker.model(x), y))
        optimizer.zero_grad()
        scaler.scale(loss * 1e4).backward()  # gradients above 2**127 / 1e4 overflow until the scale comes down
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() < 2.0**127  # the gradients overflowed and the scale was lowered
    assert float(scaffold.alpha) == 0.5 and not torch.equal(scaffold.seed.b, seed_b)
    summary = worker.checkpoint(step=40)
    assert not summary.events and "local-1" in worker.scaffolds


def test_a_non_finite_loss_cuts_even_when_a_grad_scaler_skips_the_step():
    """Non-fused Adam under a GradScaler and a loss that stays non-finite: the scaler skips every step, and the
    optimiser's pre-hook with it, yet the scaffold is cut after the next step's backward (not at the boundary)."""
    model, optimizer, worker = _live_lora(lambda params: torch.optim.Adam(params, lr=1e-2), job="skipped")
    scaffold = worker.scaffolds["local-1"]
    scaler = torch.amp.GradScaler("cpu")
    alphas = []
    for step in range(8):
        x, y = batch(step, (8, 12), 6)
        loss = F.mse_loss(worker.model(x), y)
        loss = worker.step_loss(loss * float("inf") if step >= 5 else loss)  # from step 5 every step overflows
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        alphas.append(float(scaffold.alpha))
    assert alphas == [0.5] * 6 + [0.0] * 2
    worker.checkpoint(step=8)
    assert "local-1" not in worker.scaffolds  # pruned at the boundary, exact at alpha 0


def test_a_loss_recorded_after_its_step_flags_no_later_step():
    """A trainer integration records each step's loss after that step (`end_step`, detached): a non-finite one
    cuts the scaffold, and the fused optimiser's next, healthy step still updates the host."""
    model, optimizer, worker = _live_lora(
        lambda params: torch.optim.AdamW(params, lr=1e-2, fused=True), job="after-step"
    )
    host = worker.scaffolds["local-1"].host.weight
    changed = []
    for step in range(5):
        x, y = batch(step, (8, 12), 6)
        loss = F.mse_loss(worker.model(x), y)
        loss = loss * float("nan") if step == 3 else loss
        optimizer.zero_grad()
        loss.backward()
        before = host.detach().clone()
        optimizer.step()
        worker.end_step(loss.detach())
        changed.append(not torch.equal(before, host))
    # The NaN step is skipped on device (its seed gradients are non-finite), the next one is not.
    assert changed == [True, True, True, False, True] and bool(host.isfinite().all())
    assert float(worker.scaffolds["local-1"].alpha) == 0.0


def test_loss_spike_cuts_every_live_scaffold():
    """A step loss far above the window mean cuts alpha at that step's optimiser step and prunes at the boundary."""
    model, optimizer, worker = _worker(config=WorkerConfig(breakers=BreakerConfig(spike_factor=5.0)))
    worker.submit(deploy("fc1", "lora", command_id="a", blueprint_params={"rank": 2}))
    worker.submit(deploy("fc2", "dense_delta", command_id="b"))
    worker.checkpoint(step=0)
    train(worker, optimizer, steps=6)
    x, y = batch(6, (8, 12), 6)
    loss = worker.step_loss(F.mse_loss(worker.model(x), y * 100))
    loss.backward()
    assert all(float(s.alpha) > 0 for s in worker.scaffolds.values())  # saved for backward: not changed before the step
    optimizer.step()
    assert all(float(s.alpha) == 0 for s in worker.scaffolds.values())
    summary = worker.checkpoint(step=7)
    assert sorted(e.scaffold_id for e in summary.events) == ["a", "b"]
    assert {e.kind for e in summary.events} == {"loss_spike"}
    assert not worker.scaffolds


def test_non_finite_loss_cuts_every_scaffold_and_reports_its_step():
    """An inf step loss cuts every live scaffold at the optimiser step (here one whose gradients the job
    dropped); the event names the step and the loss."""
    model, optimizer, worker = _worker()
    worker.submit(deploy("fc1", "lora", command_id="a", blueprint_params={"rank": 2}))
    worker.submit(deploy("fc2", "dense_delta", command_id="b"))
    worker.checkpoint(step=0)
    train(worker, optimizer, steps=3)
    x, y = batch(3, (8, 12), 6)
    out = worker.model(x)
    loss = worker.step_loss(F.mse_loss(out, y) + out.sum() * math.inf)
    assert all(float(s.alpha) > 0 for s in worker.scaffolds.values())
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    assert all(float(s.alpha) == 0 for s in worker.scaffolds.values())
    train(worker, optimizer, steps=2, start=4)
    summary = worker.checkpoint(step=6)
    assert sorted((e.scaffold_id, e.kind, e.step) for e in summary.events) == [
        ("a", "non_finite", 3),
        ("b", "non_finite", 3),
    ]
    assert all(e.detail == "step loss nan" for e in summary.events)
    assert not worker.scaffolds


def test_breaker_records_the_first_trip_per_check_and_every_kind_seen():
    """A spike at step 7 then a NaN loss at step 9: the loss trip has both kinds and first step 7; a
    seed that turns non-finite at step 8 has its own trip at 8; the boundary clears them all."""
    ring = StepLossRing(window=20, device=torch.device("cpu"))
    breakers = Breakers(BreakerConfig(spike_factor=5.0), ring, torch.device("cpu"))
    alpha, seed = torch.tensor(0.5), torch.ones(3)
    healthy = torch.tensor(0.25)
    breakers.arm([Watch(torch.tensor(0.5), [torch.ones(2)]), Watch(alpha, [seed])])
    for step in range(7):
        breakers.observe(torch.tensor(1.0 + 0.01 * step), step)
    breakers.observe(torch.tensor(50.0), 7)
    seed[1] = math.nan
    breakers.observe(torch.tensor(1.0), 8)
    breakers.before_step()  # the optimiser step after step 8 judges the seeds
    assert not seed.isnan().any()  # and leaves them finite
    breakers.observe(torch.tensor(math.nan), 9)
    loss_trip, (other, guarded) = breakers.settle()
    assert loss_trip == Trip(TRIP_LOSS_SPIKE | TRIP_NON_FINITE, 7)
    assert other == Trip() and guarded == Trip(TRIP_NON_FINITE, 8)
    assert float(alpha) == 0.0  # losses without a backward cut at once
    breakers.arm([Watch(healthy, [torch.ones(2)])])
    breakers.observe(torch.tensor(1.0), 10)
    assert breakers.settle() == (Trip(), [Trip()]) and float(healthy) == 0.25


def test_seed_guard_cuts_only_the_seed_whose_parameter_turned_non_finite():
    """Seeds with several parameters: an Inf in the second parameter of one seed cuts that seed's
    alpha alone at the optimiser step after it, and its trip keeps that first step when its first
    parameter turns NaN later; the other seed and the loss breaker record no trip."""
    ring = StepLossRing(window=20, device=torch.device("cpu"))
    breakers = Breakers(BreakerConfig(), ring, torch.device("cpu"))
    kept_alpha, cut_alpha = torch.tensor(0.5), torch.tensor(0.75)
    poisoned_later, poisoned = torch.ones(2), torch.ones(4)
    breakers.arm([Watch(kept_alpha, [torch.ones(2), torch.ones(3)]), Watch(cut_alpha, [poisoned_later, poisoned])])
    for step in range(3):
        breakers.observe(torch.tensor(1.0), step)
        breakers.before_step()
    assert float(cut_alpha) == 0.75
    poisoned[2] = math.inf
    breakers.observe(torch.tensor(1.0), 3)
    breakers.before_step()
    assert float(cut_alpha) == 0.0 and poisoned[2] == 0
    poisoned_later[0] = math.nan
    for step in range(4, 6):
        breakers.observe(torch.tensor(1.0), step)
        breakers.before_step()
    assert (float(kept_alpha), float(cut_alpha)) == (0.5, 0.0)
    assert breakers.settle() == (Trip(), [Trip(), Trip(TRIP_NON_FINITE, 3)])


def test_spike_breaker_judges_a_negative_loss_by_its_distance_from_the_mean():
    """A steady negative loss (mean -3) is no spike; with spike_factor 10 the limit is
    -3 + 9 * 3 = 24, so 20 passes and 30 trips, at its own step."""
    ring = StepLossRing(window=20, device=torch.device("cpu"))
    breakers = Breakers(BreakerConfig(spike_factor=10.0), ring, torch.device("cpu"))
    alpha = torch.tensor(0.5)
    breakers.arm([Watch(alpha, [torch.ones(2)])])
    for step in range(12):
        breakers.observe(torch.tensor(-3.0), step)
    breakers.observe(torch.tensor(20.0), 12)
    assert float(alpha) == 0.5 and breakers.settle() == (Trip(), [Trip()])
    breakers.arm([Watch(alpha, [torch.ones(2)])])
    for step in range(13, 20):
        breakers.observe(torch.tensor(-3.0), step)
    breakers.observe(torch.tensor(30.0), 20)
    assert float(alpha) == 0.0 and breakers.settle() == (Trip(TRIP_LOSS_SPIKE, 20), [Trip()])


def test_a_closed_worker_leaves_the_optimiser_without_its_hooks():
    """Closing a worker removes its optimiser hooks (breakers, seed rates), so a fresh worker on the same optimiser
    (a resume in the same process) guards and schedules alone; closing twice is safe."""
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def hooks() -> tuple[int, int, int]:
        return (
            len(optimizer._optimizer_step_pre_hooks),
            len(optimizer._optimizer_step_post_hooks),
            len(optimizer._optimizer_load_state_dict_post_hooks),
        )

    before = hooks()
    worker = KasminaWorker(model, optimizer, job="closing")
    assert hooks() != before
    worker.close()
    worker.close()
    assert hooks() == before
