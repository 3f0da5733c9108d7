"""Gate measurement at boundaries (docs/design.md, section 5): what the worker reports for Narset to judge."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import MoEModel, batch, deploy, on, result_ok, schedule
from torch import nn

from kasmina_worker import KasminaWorker
from kasmina_worker.measure.breakers import BreakerConfig
from kasmina_worker.measure.gate_formulas import diversity_index, drift, jitter_p95
from kasmina_worker.worker import WorkerConfig
from narset.contract.scaffold_policy import DEFAULT_GATES
from narset.control.judge import Reading, judge

ALL_GATES = (
    "transfer_rel_delta",
    "probe_loss",
    "foldability",
    "jitter_p95",
    "drift",
    "diversity",
    "step_time_ratio",
    "memory_fraction",
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.GELU(), nn.Linear(20, 20), nn.GELU(), nn.Linear(20, 6))


def _probe(n: int = 4, d_in: int = 12, d_out: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch(900 + i, (16, d_in), d_out) for i in range(n)]


def _train(worker, optimizer, steps: int, start: int = 0, d_in: int = 12, d_out: int = 6, clock=None) -> None:
    for step in range(start, start + steps):
        x, y = batch(step, (8, d_in), d_out)
        loss = worker.step_loss(F.mse_loss(worker.model(x), y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if clock is not None:
            clock.tick()


def _warm(level: float | None = None, **phases):
    policy = schedule(**(phases or {"warmup_ckpts": 1, "hold_ckpts": 10}))
    if level is not None:
        policy.schedule.warm_level = level
    return policy


def _worker(model, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="gates", probe=_probe(), loss_fn=F.mse_loss, **kwargs)
    return worker, optimizer


def _three_scaffolds():
    model = _model()
    worker, optimizer = _worker(model, regions={"first": ["0"], "middle": ["2"], "none": ["nothing"]})
    _train(worker, optimizer, 20)
    worker.submit(deploy("0", "lora", command_id="lora", blueprint_params={"rank": 2}, policy=_warm()))
    worker.submit(deploy("2", "dense_delta", command_id="dense", policy=_warm()))
    worker.submit(
        deploy(
            "4", "residual_mlp", command_id="mlp", blueprint_params={"hidden": 8}, learning_rate=0.05, policy=_warm()
        )
    )
    summary = worker.checkpoint(step=20)
    for i in range(3):
        result_ok(summary, i)
    return model, worker, optimizer


class FakeClock:
    """A perf_counter that advances only by `tick` (a fixed step time)."""

    def __init__(self, step_s: float) -> None:
        self.now = 100.0
        self.step_s = step_s

    def tick(self) -> None:
        self.now += self.step_s

    def __call__(self) -> float:
        return self.now


def test_all_five_gates_reported_for_lora_dense_delta_and_residual_mlp_each_boundary():
    """Every live lora / dense_delta / residual_mlp scaffold reports G1, G3, G4, G5 and the probe loss each boundary,
    and the host's diversity exactly where the site's is below diversity_min (the one case Narset reads it)."""
    model, worker, optimizer = _three_scaffolds()
    for k in range(2):
        _train(worker, optimizer, 20, start=20 + 20 * k)
        summary = worker.checkpoint(step=40 + 20 * k)
        report = summary.report
        assert report.HasField("step_time_ms") and report.step_time_ms > 0
        by_id = {s.scaffold_id: s for s in report.scaffolds}
        for sid in ("lora", "dense", "mlp"):
            gates = by_id[sid].gates
            assert gates == summary.gates[sid]
            missing = [name for name in ALL_GATES if not gates.HasField(name)]
            assert not missing, (sid, missing)
            assert gates.HasField("host_diversity") == (gates.diversity < DEFAULT_GATES.diversity_min), sid
            assert gates.probe_loss == summary.probe_loss == report.probe_loss
            assert 0.0 < gates.memory_fraction < 1.0
        assert by_id["dense"].gates.HasField("svd_energy") and 0.0 < by_id["dense"].gates.svd_energy <= 1.0
        assert not by_id["lora"].gates.HasField("svd_energy")
        assert abs(by_id["lora"].gates.transfer_rel_delta) < 1e-5  # an exact fold changes no loss
        assert by_id["mlp"].gates.transfer_rel_delta != 0.0  # bypassing a live seed does not


def test_g1_matches_real_exits_for_lora_residual_mlp_and_moe():
    """G1 equals the relative probe-loss change of the real lora fold, a bypassed residual_mlp and a router fold."""
    model = _model()
    worker, optimizer = _worker(model)
    _train(worker, optimizer, 5)
    worker.submit(deploy("2", "lora", command_id="lora", blueprint_params={"rank": 2}, policy=_warm()))
    worker.submit(
        deploy(
            "4", "residual_mlp", command_id="mlp", blueprint_params={"hidden": 8}, learning_rate=0.05, policy=_warm()
        )
    )
    worker.checkpoint(step=5)
    _train(worker, optimizer, 10, start=5)
    worker.submit(on("fold", scaffold_id="lora"))
    bypassed = copy.deepcopy(model)
    bypassed[4] = bypassed[4].host
    summary = worker.checkpoint(step=15)
    assert summary.scaffold("lora").stage == "SCAFFOLD_STAGE_FUSED"
    probe = summary.probe_loss
    folded = worker.probe_loss()
    g1 = summary.report.scaffolds[0].gates.transfer_rel_delta
    assert g1 == pytest.approx((folded - probe) / probe, rel=1e-6, abs=1e-9)
    with torch.no_grad():
        p_bypass = float(torch.stack([F.mse_loss(bypassed.eval()(x), y) for x, y in _probe()]).mean())
    g1_mlp = summary.gates["mlp"].transfer_rel_delta
    assert abs(g1_mlp) > 1e-5
    assert g1_mlp == pytest.approx((p_bypass - probe) / probe, rel=1e-6)

    torch.manual_seed(4)
    moe = MoEModel()
    optimizer = torch.optim.Adam(moe.parameters(), lr=1e-2)
    probe_set = [batch(500 + i, (16, 6), 3) for i in range(3)]
    worker = KasminaWorker(moe, optimizer, job="moe", probe=probe_set, loss_fn=F.mse_loss)
    _train(worker, optimizer, 5, d_in=6, d_out=3)
    policy = _warm()
    policy.fold.sunset_ckpts = 0
    worker.submit(deploy("moe", "moe_expert", command_id="moe", policy=policy))
    result_ok(worker.checkpoint(step=5))
    _train(worker, optimizer, 8, start=5, d_in=6, d_out=3)
    worker.submit(on("fold", scaffold_id="moe"))
    summary = worker.checkpoint(step=13)
    assert summary.scaffold("moe").stage == "SCAFFOLD_STAGE_FUSED"
    g1 = summary.report.scaffolds[0].gates.transfer_rel_delta
    expected = (worker.probe_loss() - summary.probe_loss) / summary.probe_loss
    assert abs(expected) > 1e-4  # alpha 0.1 < 1: the router fold really changes the model
    assert g1 == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_g3_is_one_for_an_exact_fold_at_any_alpha_and_below_one_for_residual_mlp(alpha):
    """Foldability ≈ 1 for trained lora / dense_delta at any alpha; < 1 for residual_mlp at alpha > 0."""
    model = _model()
    worker, optimizer = _worker(model)
    _train(worker, optimizer, 3)
    worker.submit(deploy("0", "lora", command_id="lora", blueprint_params={"rank": 2}, policy=_warm(alpha)))
    worker.submit(deploy("2", "dense_delta", command_id="dense", policy=_warm(alpha)))
    worker.submit(
        deploy(
            "4",
            "residual_mlp",
            command_id="mlp",
            blueprint_params={"hidden": 8},
            learning_rate=0.05,
            policy=_warm(alpha),
        )
    )
    worker.checkpoint(step=3)
    _train(worker, optimizer, 10, start=3)
    summary = worker.checkpoint(step=13)
    assert all(s.alpha == pytest.approx(alpha) for s in summary.scaffolds)
    assert worker.scaffolds["lora"].seed.b.abs().max() > 0  # trained, not the identity init
    assert summary.gates["lora"].foldability == pytest.approx(1.0, abs=1e-6)
    assert summary.gates["dense"].foldability == pytest.approx(1.0, abs=1e-6)
    assert summary.gates["mlp"].foldability < 1.0 - 1e-4


def test_jitter_and_drift_match_hand_computed_values():
    """jitter_p95 and drift follow their formulas on known sequences, and the worker applies them to its ring."""
    losses = torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0])
    # ratios 0, 1/(1+1e-6), 0, 1/(2+1e-6); sorted [0, 0, ~0.5, ~1]; p95 at position 0.95·3 = 2.85.
    low, high = 1 / (2 + 1e-6), 1 / (1 + 1e-6)
    assert jitter_p95(losses) == pytest.approx(low + 0.85 * (high - low), rel=1e-12)
    assert jitter_p95(torch.tensor([3.0])) is None
    assert drift(torch.tensor([1.0, 2.0, 3.0, 5.0]), 2) == pytest.approx(2.5)
    assert drift(torch.tensor([9.0, 1.0, 2.0, 3.0, 5.0]), 2) == pytest.approx(2.5)  # only the last 2k count
    assert drift(torch.tensor([1.0, 2.0, 3.0]), 2) is None

    model = _model()
    config = WorkerConfig(breakers=BreakerConfig(window=8, min_history=2))
    worker, optimizer = _worker(model, config=config)
    worker.submit(deploy("2", "lora", command_id="lora", policy=_warm()))
    worker.checkpoint(step=0)
    _train(worker, optimizer, 3)
    young = worker.checkpoint(step=3).gates["lora"]
    assert young.HasField("jitter_p95") and not young.HasField("drift")  # 3 < 2K = 8 losses
    _train(worker, optimizer, 11, start=3)
    gates = worker.checkpoint(step=14).gates["lora"]
    ring = worker.step_losses("lora")
    assert ring.numel() == 8
    values = ring.double().tolist()
    ratios = sorted(abs(b - a) / (abs(a) + 1e-6) for a, b in itertools.pairwise(values))
    position = 0.95 * (len(ratios) - 1)
    lo = int(position)
    expected_jitter = ratios[lo] + (position - lo) * (ratios[lo + 1] - ratios[lo])
    assert gates.jitter_p95 == pytest.approx(expected_jitter, rel=1e-9)
    assert gates.drift == pytest.approx(abs(sum(values[4:]) / 4 - sum(values[:4]) / 4), rel=1e-9)


def test_diversity_is_high_for_random_features_and_low_for_collapsed_ones():
    """The diversity index is near 1 for independent features and near 0 for collapsed or dead features."""
    g = torch.Generator().manual_seed(0)
    random = [torch.randn(256, 16, generator=g) for _ in range(2)]
    assert diversity_index(random) > 0.9
    u = torch.randn(512, 1, generator=g)
    scales = torch.randn(1, 16, generator=g)
    collapsed = u * scales + torch.randn(1, 16, generator=g)  # every feature an affine copy of one
    assert diversity_index([collapsed]) < 0.01
    assert diversity_index([torch.ones(64, 16)]) == 0.0
    half_dead = torch.cat([torch.randn(512, 8, generator=g), torch.zeros(512, 8)], dim=1)
    assert diversity_index([half_dead]) < 0.8
    sequence = torch.randn(8, 32, 16, generator=g)  # [batch, positions, features]: rows are every position
    assert diversity_index([sequence]) > 0.9
    assert diversity_index([sequence], max_features=4, max_samples=64) > 0.5
    assert diversity_index([torch.randn(1, 16, generator=g)]) is None


def test_host_diversity_is_the_index_of_the_host_output_at_the_site():
    """host_diversity is the diversity index of the bypassed host's output at the site; with delta 0, the site's."""
    model = _model()
    worker, optimizer = _worker(model)
    _train(worker, optimizer, 5)
    policy = _warm()
    policy.gates.diversity_min = 1.0  # every site below it: the host's diversity is measured
    worker.submit(deploy("2", "lora", blueprint_params={"rank": 2}, policy=policy))
    worker.checkpoint(step=5)
    [report] = worker.checkpoint(step=5).report.scaffolds  # no step since the deploy: B = 0, delta 0
    with torch.no_grad():
        host_outputs = [worker.model[2].host(model[1](model[0](x))) for x, _ in _probe()]
    assert report.gates.host_diversity == pytest.approx(diversity_index(host_outputs), abs=1e-6)
    assert report.gates.host_diversity == pytest.approx(report.gates.diversity, abs=1e-6)


def test_exit_that_leaves_the_site_unchanged_takes_no_probe_pass_of_its_own():
    """A live lora at alpha 0 (its fold gives the site's outputs bit for bit) has its G1 from the boundary's one probe
    pass; at alpha 0.5 its G1 takes a second pass (probe batches through the model, counted)."""
    model = _model()
    worker, optimizer = _worker(model)
    worker.submit(deploy("2", "lora", blueprint_params={"rank": 2}, policy=_warm()))
    worker.checkpoint(step=0)
    _train(worker, optimizer, 5)
    scaffold = worker.scaffolds["local-1"]
    assert scaffold.seed.delta_weight().abs().sum() > 0
    passes = []
    model.register_forward_pre_hook(lambda module, args: passes.append(1))
    for alpha, batches in ((0.0, len(_probe())), (0.5, 2 * len(_probe()))):
        with torch.no_grad():
            scaffold.alpha.fill_(alpha)
        passes.clear()
        [report] = worker.checkpoint(step=5).report.scaffolds
        assert len(passes) == batches, alpha
        assert report.gates.HasField("transfer_rel_delta") and abs(report.gates.transfer_rel_delta) < 1e-5
    assert report.gates.foldability < 1.0  # at alpha 0.5 the fold rounds differently from the blend


def test_step_time_ratio_needs_a_baseline_and_is_one_when_nothing_changed():
    """No baseline (deployed before any step): unset; with a pre-deploy interval and equal step times: exactly 1."""
    clock = FakeClock(0.01)
    model = _model()
    worker, optimizer = _worker(model, config=WorkerConfig(clock=clock))
    worker.submit(deploy("0", "lora", command_id="early", policy=_warm()))
    first = worker.checkpoint(step=0)
    assert not first.report.HasField("step_time_ms")  # no step in the interval
    _train(worker, optimizer, 10, clock=clock)
    summary = worker.checkpoint(step=10)
    assert summary.report.step_time_ms == pytest.approx(10.0)
    assert not summary.gates["early"].HasField("step_time_ratio")
    worker.submit(deploy("2", "lora", command_id="late", policy=_warm()))
    worker.checkpoint(step=10)
    _train(worker, optimizer, 10, start=10, clock=clock)
    same = worker.checkpoint(step=20).gates["late"]
    assert same.step_time_ratio == pytest.approx(1.0)
    clock.step_s = 0.02
    _train(worker, optimizer, 10, start=20, clock=clock)
    slower = worker.checkpoint(step=30)
    assert slower.gates["late"].step_time_ratio == pytest.approx(2.0)
    assert not slower.gates["early"].HasField("step_time_ratio")
    # The baseline is part of the worker's state.
    state = worker.state_dict()
    fresh, _ = _worker(_model())
    fresh.load_state_dict(state)
    assert fresh._meter.baselines_ms == {"early": None, "late": pytest.approx(10.0)}


def test_measurement_leaves_the_model_and_the_trajectory_untouched():
    """Parameters, buffers, modes and the RNG are unchanged by measuring; a measured run trains bit-identically."""
    model, worker, optimizer = _three_scaffolds()
    model[1].train(False)
    _train(worker, optimizer, 20, start=20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    measures = worker._meter.measure(worker._runtime.live, worker._steps)
    assert all(measures.gates[sid].HasField("transfer_rel_delta") for sid in ("lora", "dense", "mlp"))
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    def run(measure: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(12, 20), nn.BatchNorm1d(20), nn.GELU(), nn.Dropout(0.2), nn.Linear(20, 6))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        probe = _probe() if measure else None
        worker = KasminaWorker(net, optimizer, job="traj", probe=probe, loss_fn=F.mse_loss, regions={"r": ["*"]})
        _train(worker, optimizer, 5)
        worker.submit(deploy("0", "lora", blueprint_params={"rank": 2}, policy=_warm()))
        worker.submit(deploy("4", "residual_mlp", blueprint_params={"hidden": 8}, learning_rate=0.05, policy=_warm()))
        worker.checkpoint(step=5)
        for k in range(3):
            _train(worker, optimizer, 7, start=5 + 7 * k)
            worker.checkpoint(step=12 + 7 * k)
        return {k: v.clone() for k, v in net.state_dict().items()}

    measured, unmeasured = run(True), run(False)
    assert all(torch.equal(measured[k], unmeasured[k]) for k in unmeasured)


def test_unmeasured_gates_stay_unset_and_fail():
    """Without a probe set or enough steps, gates are left unset (never 0), and Narset's judge fails them."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="noprobe")
    worker.submit(deploy("2", "dense_delta", command_id="dense", policy=_warm()))
    worker.checkpoint(step=0)
    _train(worker, optimizer, 1)
    gates = worker.checkpoint(step=1).report.scaffolds[0].gates
    unset = ("transfer_rel_delta", "probe_loss", "foldability", "jitter_p95", "drift", "diversity", "step_time_ratio")
    assert [name for name in unset if gates.HasField(name)] == []
    assert gates.HasField("svd_energy") and gates.HasField("memory_fraction")  # need no probe
    verdicts = {v.gate: v for v in judge(gates, DEFAULT_GATES, None, Reading(None, 0)).verdicts}
    for gate in ("G1", "G3", "G4.jitter", "G4.drift", "G4.diversity", "G5.step_time"):
        assert not verdicts[gate].passed and not verdicts[gate].HasField("value")


def test_region_signals_report_update_ratio_and_grad_norm():
    """Each declared region gets a signal: update ratio since the last boundary and grad norm, scaffolded hosts too."""
    model, worker, optimizer = _three_scaffolds()
    first = {s.region: s for s in worker.checkpoint(step=20).report.region_signals}
    assert list(first) == ["first", "middle", "none"]
    assert all(not s.HasField("update_ratio") or s.update_ratio == 0.0 for s in first.values())
    _train(worker, optimizer, 10, start=20)
    signals = {s.region: s for s in worker.checkpoint(step=30).report.region_signals}
    # lora and dense_delta train their hosts "0" and "2" jointly (the default host_mode): both move.
    assert signals["first"].update_ratio > 0.0 and signals["first"].grad_norm > 0.0
    assert not signals["none"].HasField("update_ratio") and not signals["none"].HasField("grad_norm")
    worker.submit(on("prune", scaffold_id="dense", immediate=True))
    worker.checkpoint(step=30)
    _train(worker, optimizer, 10, start=30)
    moved = {s.region: s for s in worker.checkpoint(step=40).report.region_signals}["middle"]
    assert moved.update_ratio > 0.0 and moved.grad_norm > 0.0
