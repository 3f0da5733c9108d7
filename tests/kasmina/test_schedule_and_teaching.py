"""Alpha schedules (pure), teaching-loss directions, and user-registered blueprints."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MLP, batch, deploy, result_ok, schedule
from torch import nn

from kasmina_worker import BuildContext, KasminaWorker, Seed, blueprint_names, register_blueprint
from kasmina_worker.runtime.schedule import AlphaSchedule, ScheduleConfig
from kasmina_worker.runtime.teaching import kd_loss
from narset.v1 import command_pb2, job_pb2, telemetry_pb2

S = telemetry_pb2


def _config(**overrides) -> ScheduleConfig:
    base = dict(isolated=1, warmup=2, hold=3, decay=4, warm_level=0.5, floor=0.1, cosine=False, ttl=12, sunset=2)
    return ScheduleConfig(**(base | overrides))


def _walk(schedule: AlphaSchedule, boundaries: int):
    out = []
    for _ in range(boundaries):
        out.append((schedule.stage(), round(schedule.alpha(), 6), schedule.host_frozen()))
        schedule.advance()
    return out


def test_lifecycle_timeline_linear():
    """Positions walk TRAIN_ISOLATED, GRAFTING, HOLD, DECAY, then hold the floor, then EVALUATING at TTL; the host
    is frozen only under freeze_host, and then only while grafting and holding."""
    walk = _walk(AlphaSchedule(_config()), 13)
    assert [w[0] for w in walk] == [S.SCAFFOLD_STAGE_TRAIN_ISOLATED] + [S.SCAFFOLD_STAGE_GRAFTING] * 2 + [
        S.SCAFFOLD_STAGE_HOLD
    ] * 3 + [S.SCAFFOLD_STAGE_DECAY] * 6 + [S.SCAFFOLD_STAGE_EVALUATING]
    assert [w[1] for w in walk] == [0.0, 0.25, 0.5, 0.5, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]
    assert [w[2] for w in walk] == [False] * 13
    frozen = _walk(AlphaSchedule(_config(freeze_host=True)), 13)
    assert [w[:2] for w in frozen] == [w[:2] for w in walk]
    assert [w[2] for w in frozen] == [False] + [True] * 5 + [False] * 7


def test_cosine_curve_and_determinism_and_restore():
    """Cosine ramps follow (1 - cos(pi t)) / 2; a schedule restored from to_dict continues identically."""
    schedule = AlphaSchedule(_config(cosine=True, isolated=0, warmup=4))
    assert schedule.alpha() == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)) / 2)
    schedule.advance()
    copy = AlphaSchedule.from_dict(schedule.to_dict())
    assert _walk(copy, 14) == _walk(schedule, 14)


def test_pause_persist_and_sunset():
    """Pause freezes the position; persist moves EVALUATING back; a sunset ramps to its target and arrives."""
    schedule = AlphaSchedule(_config(isolated=0, warmup=1, hold=1, decay=0, ttl=2))
    schedule.pause()
    schedule.advance()
    assert schedule.stage() == S.SCAFFOLD_STAGE_GRAFTING and schedule.state.age == 1
    schedule.resume()
    schedule.advance()
    schedule.advance()
    assert schedule.stage() == S.SCAFFOLD_STAGE_EVALUATING
    assert str(schedule.persist_error(3)) == "persist.extra_ckpts: TTL 2 + 3 would exceed 2x the original TTL (4)"
    schedule.persist(2)
    assert schedule.stage() == S.SCAFFOLD_STAGE_HOLD
    schedule.start_sunset(0.0)
    assert schedule.stage() == S.SCAFFOLD_STAGE_SUNSET and schedule.alpha() == 0.25 and not schedule.sunset_arrived()
    schedule.advance()
    assert schedule.alpha() == 0.0 and schedule.sunset_arrived()


def test_permanent_growth_ramps_to_one_and_stays():
    """A non-scaffold deploy ramps alpha to 1 over the warmup and stays PERMANENT, no TTL."""
    schedule = AlphaSchedule(_config(warmup=2, as_scaffold=False))
    walk = _walk(schedule, 30)
    assert walk[0][:2] == (S.SCAFFOLD_STAGE_GRAFTING, 0.5)
    assert all(w[:2] == (S.SCAFFOLD_STAGE_PERMANENT, 1.0) for w in walk[2:])
    assert (
        str(schedule.persist_error(1))
        == "persist.scaffold: a permanent (as_scaffold=false) deploy has no TTL to extend"
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(warm_level=1.5), "warm_level must be in [0, 1], got 1.5"),
        (dict(floor=0.7), "floor must be in [0, warm_level=0.5], got 0.7"),
        (dict(ttl=3), "ttl must be >= max(1, phase length 10), got 3"),
        (dict(hold=-1), "hold must be >= 0, got -1"),
    ],
)
def test_schedule_config_validation_names_the_bad_value(overrides, message):
    """Invalid schedule configs are refused with a message naming the field and value."""
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(**overrides)


def test_kd_loss_matches_its_formula():
    """KD is tau^2 * KL(softmax(t/tau) || softmax(s/tau)), batch-averaged."""
    s, t, tau = torch.randn(4, 7), torch.randn(4, 7), 2.0
    p_t = F.softmax(t / tau, -1)
    expected = tau**2 * (p_t * (p_t.log() - F.log_softmax(s / tau, -1))).sum(-1).mean()
    torch.testing.assert_close(kd_loss(s, t, tau), expected)


def _teaching_worker(policy):
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    worker = KasminaWorker(model, optimizer, job="teach", probe_losses=[lambda s, t: (s - t).abs().mean()])
    worker.submit(deploy("fc1", "residual_mlp", blueprint_params={"hidden": 6}, policy=policy))
    result_ok(worker.checkpoint(step=0))
    scaffold = worker.scaffolds["local-1"]
    nn.init.normal_(scaffold.seed.fc_out.weight, std=0.3)
    return model, worker, scaffold


def test_isolated_training_host_teaches_seed():
    """In TRAIN_ISOLATED the site distillation sends gradient to the seed (student) and adds the MSE term."""
    policy = schedule(isolated_ckpts=2, warmup_ckpts=1)
    policy.teaching.site_distill_weight = 2.0
    model, worker, scaffold = _teaching_worker(policy)
    x, y = batch(0, (8, 12), 6)
    task = F.mse_loss(worker.model(x), y)
    site = scaffold.site
    total = worker.step_loss(task)
    expected = 2.0 * F.mse_loss(site.seed_out, site.host_out)
    torch.testing.assert_close(total - task, expected)
    total.backward()
    assert scaffold.seed.fc_out.weight.grad.abs().sum() > 0  # alpha is 0: only teaching reaches the seed


def test_weaning_seed_teaches_host_with_kd_and_probe_losses():
    """In DECAY the host output is the student of the site's blend at the current alpha (site MSE, KD at the
    site, probe callables)."""
    policy = schedule(warmup_ckpts=1, decay_ckpts=4)
    policy.teaching.site_distill_weight = 1.0
    policy.teaching.kd.weight = 0.5
    policy.teaching.probe_weight = 0.25
    model, worker, scaffold = _teaching_worker(policy)
    worker.checkpoint(step=1)
    x, y = batch(1, (8, 12), 6)
    task = F.mse_loss(worker.model(x), y)
    site = scaffold.site
    alpha = float(scaffold.alpha)
    assert 0 < alpha < 0.25  # weaning from the warm level 0.25
    teacher = torch.lerp(site.host_out, site.seed_out, alpha).detach()
    expected = (
        F.mse_loss(site.host_out, teacher)
        + 0.5 * kd_loss(site.host_out, teacher, 2.0)
        + 0.25 * (site.host_out - teacher).abs().mean()
    )
    total = worker.step_loss(task)
    torch.testing.assert_close(total - task, expected)
    model.zero_grad()
    grads = torch.autograd.grad(total - task, [scaffold.host.weight, scaffold.seed.fc_out.weight], allow_unused=True)
    assert grads[0].abs().sum() > 0
    assert grads[1] is None or grads[1].abs().sum() < 1e-6  # the teacher is detached


def test_feature_taps_run_a_host_only_pass_on_their_cadence():
    """While weaning, feature MSE compares tap outputs of a host-only pass and the training pass, every N steps."""
    policy = schedule(warmup_ckpts=1, decay_ckpts=4)
    policy.teaching.feature.CopyFrom(command_pb2.FeatureLoss(weight=1.0, taps=["act"], cadence_steps=2))
    model, worker, scaffold = _teaching_worker(policy)
    worker.checkpoint(step=1)
    extras = []
    for step in range(4):
        x, y = batch(step, (8, 12), 6)
        task = F.mse_loss(worker.model(x), y)
        with torch.no_grad():
            host_only = F.gelu(scaffold.host(x))
            blended = F.gelu(scaffold(x))
        extra = worker.step_loss(task) - task
        extras.append(float(extra))
        if step % 2 == 1:  # steps counted from 1: the 2nd and 4th calls
            torch.testing.assert_close(extra, F.mse_loss(host_only, blended))
    assert extras[0] == 0.0 and extras[2] == 0.0 and extras[1] > 0 and extras[3] > 0
    assert isinstance(model.fc1, type(scaffold))


class ScaledSeed(Seed):
    """A test blueprint: s(x) = h(x).detach() * (1 + g)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, x, host_out, host):
        return host_out.detach() * (1 + self.g)


SCALED = job_pb2.Blueprint(
    name="test_scaled",
    host_types=["Linear"],
    size_class=job_pb2.SIZE_CLASS_MICRO,
    folds=[job_pb2.FOLD_KIND_TRANSFER],
    default_learning_rate=1e-2,
)


def test_users_can_register_a_blueprint():
    """A blueprint registered with the decorator is built, trained and refused on other host types."""

    @register_blueprint(SCALED)
    def build(ctx: BuildContext) -> Seed:
        return ScaledSeed(int(ctx.info.out_features))

    assert "test_scaled" in blueprint_names()
    torch.manual_seed(0)
    model = MLP()
    worker = KasminaWorker(model, torch.optim.SGD(model.parameters(), lr=0.1), job="custom")
    worker.submit(deploy("fc2", "test_scaled", policy=schedule(warmup_ckpts=1, hold_ckpts=1)))
    worker.submit(deploy("act", "test_scaled"))
    results = worker.checkpoint(step=0).results
    assert results[0].outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED
    assert "attaches to Linear, but module 'act' is a GELU" in results[1].message
    x = torch.randn(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.fc2.host(F.gelu(model.fc1(x))) * 1.25)
