"""The tactical policy (warm start, plateau vs overfitting); G5 over a scaffold's life; G4 diversity vs the host."""

from __future__ import annotations

import json

import pytest
from narset_testing import deployed, gates, live

from narset.cli import main
from narset.client import NarsetError
from narset.contract import reasons
from narset.control.judge import Reading, step_time_statistic
from narset.control.tactical import loss_regime, relative_change
from narset.v1 import telemetry_pb2

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.backends

S = telemetry_pb2
SIGNALS = [S.RegionSignal(region="encoder", update_ratio=1e-2), S.RegionSignal(region="decoder", update_ratio=1e-5)]


def auto_on(server, *settings: str) -> None:
    args = ["policy", "run-7", "--auto", "on", "--server", server.address]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0


def report_losses(job, train, val, **fields) -> list[S.Decision]:
    """One boundary per (train, val) pair, both reported as metrics; the decisions of every report."""
    decisions = []
    for t, v in zip(train, val, strict=True):
        decisions += job.report(v, metrics={"train_loss": t, "val_loss": v}, **fields).decisions
    return decisions


def test_relative_change_follows_the_fitted_line():
    """The change is the least-squares line's over the window, relative to its mean; None when unmeasurable."""
    assert relative_change([1.0, 0.9, 0.8]) == pytest.approx(-0.2 / 0.9)
    assert relative_change([1.0, 1.0, 1.3, 1.0, 1.0]) == pytest.approx(0.0)  # one noisy boundary mid-window
    assert relative_change([1.0, float("nan")]) is None
    assert relative_change([0.0, 0.0]) is None


def test_loss_regime_table():
    """Both flat is a plateau; train falling is overfitting; rising losses are instability; no train is unknown."""
    d = 0.01
    assert loss_regime(-0.005, 0.004, d) == "plateau"
    assert loss_regime(-0.2, -0.1, d) == "improving"
    assert loss_regime(-0.2, 0.05, d) == "overfitting"
    assert loss_regime(-0.2, 0.0, d) == "overfitting"
    assert loss_regime(0.0, 0.05, d) == "instability"
    assert loss_regime(0.05, 0.0, d) == "instability"
    assert loss_regime(None, 0.05, d) == "instability"
    assert loss_regime(None, 0.0, d) == "unknown"
    assert loss_regime(0.0, None, d) is None


def test_plateau_deploys_where_updates_stalled(server, job, capsys):
    """With train and validation loss flat over the window, the policy deploys where the host moved least."""
    auto_on(server, "auto.plateau_window=3")
    assert not report_losses(job, (1.0, 0.6, 0.4), (1.1, 0.7, 0.5), region_signals=SIGNALS)
    assert not report_losses(job, (0.399, 0.3985), (0.499, 0.4985), region_signals=SIGNALS)  # not yet flat
    response = job.report(0.498, metrics={"train_loss": 0.398, "val_loss": 0.498}, region_signals=SIGNALS)
    [decision] = response.decisions
    assert decision.outcome == S.DECISION_OUTCOME_DEPLOY and decision.issued_by == "policy:tactical"
    assert decision.reason.startswith("plateau: train_loss changed -") and "val_loss -" in decision.reason
    assert "region 'decoder' has the lowest update ratio" in decision.reason
    [command] = response.commands
    assert (command.deploy.module, command.deploy.blueprint) == ("decoder.fc1", "lora")
    assert not report_losses(job, [0.398], [0.498], region_signals=SIGNALS)  # one policy scaffold at a time
    capsys.readouterr()
    assert main(["decisions", "run-7", "--server", server.address]) == 0
    assert "plateau" in capsys.readouterr().out


def test_overfitting_deploys_nothing(server, job):
    """Train loss falling while validation rises (or stalls) never deploys capacity."""
    auto_on(server, "auto.plateau_window=3")
    train = [1.0 - 0.05 * k for k in range(12)]
    rising = [0.5 + 0.02 * k for k in range(6)]
    flat = [0.6] * 6
    assert not report_losses(job, train, rising + flat)


def test_instability_deploys_nothing(server, job):
    """A rising validation loss with train flat or rising is instability: nothing is deployed."""
    auto_on(server, "auto.plateau_window=3")
    assert not report_losses(job, [0.4] * 6, [0.5 + 0.05 * k for k in range(6)])
    assert not report_losses(job, [0.4 + 0.05 * k for k in range(6)], [0.8] * 6)


def test_flat_validation_without_train_loss_deploys_nothing(server, job):
    """Without a reported train_loss a flat validation loss cannot be told from overfitting: nothing deployed."""
    auto_on(server, "auto.plateau_window=3")
    for _ in range(6):
        assert not job.report(0.5, metrics={"val_loss": 0.5}).decisions
        assert not job.report(0.5).decisions


def test_auto_policy_off_by_default(job):
    """Without --auto on, a plateau deploys nothing."""
    assert not report_losses(job, [0.5] * 6, [0.5] * 6)


def test_auto_policy_uses_a_module_outside_every_region(job, client):
    """With the named regions protected, the policy deploys on a module that is its own implicit region."""
    policy = client.get_policy("run-7")
    policy.auto.enabled = True
    policy.protected_regions.extend(["encoder", "decoder"])
    client.set_policy("run-7", policy)
    assert not report_losses(job, [0.4] * 3, [0.5] * 3)
    [decision] = report_losses(job, [0.4], [0.5])
    assert "region 'h.0.attn.c_attn' is the first with room" in decision.reason
    [scaffold] = client.list_scaffolds("run-7")
    assert (scaffold.module, scaffold.region) == ("h.0.attn.c_attn", "h.0.attn.c_attn")


def test_warm_start_deploys_at_first_timed_boundary_and_is_judged_at_exit(server, job, capsys):
    """Warm start: deploys once, at the first boundary with a step time, and the gates decide at the exit boundary."""
    auto_on(
        server,
        "auto.plateau_window=0",
        "auto.blueprint_params=rank=4",
        "auto.warm_start=encoder,decoder:dense_delta",
        "auto.warm_start_exit=8",
    )
    assert not job.report(1.0, step_time_ms=None).decisions  # no interval trained yet: no step-time base for G5
    response = job.report(0.9, step_time_ms=2.0)
    assert [d.reason for d in response.decisions] == [
        "warm start: lora in region 'encoder', judged at boundary 8",
        "warm start: dense_delta in region 'decoder', judged at boundary 8",
    ]
    commands = {c.deploy.module: c.deploy for c in response.commands}
    assert commands["encoder.fc1"].blueprint_params == {"rank": 4.0}
    # Seen in EVALUATING one boundary after its TTL: 8 - 2 - 1; the hold fills what the warmup leaves.
    assert [(d.blueprint, d.policy.ttl_ckpts, d.policy.schedule.hold_ckpts) for d in commands.values()] == [
        ("lora", 5, 3),
        ("dense_delta", 5, 3),
    ]
    scaffold_id = response.decisions[0].scaffold_id
    for age in range(5):  # as the worker reports: age 0 at the first report after the deploy boundary
        report = live(S.SCAFFOLD_STAGE_HOLD, age=age, ttl=5, scaffold_id=scaffold_id)
        assert not job.report(0.8, [report], step_time_ms=2.0).decisions  # once per job
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, age=5, ttl=5, scaffold_id=scaffold_id)]).decisions
    # Two losses before the deploy are no trend: G2 credits the improvement since the deploy.
    assert (decision.boundary, decision.outcome) == (8, S.DECISION_OUTCOME_FUSE), decision.reason
    capsys.readouterr()
    assert main(["policy", "run-7", "--server", server.address]) == 0
    table = capsys.readouterr().out
    assert "encoder,decoder:dense_delta" in table and "rank=4" in table


def test_warm_start_settings_are_validated(server, job, capsys):
    """An unknown site blueprint, a site without a region or a negative exit boundary is refused by field."""
    for setting, field in (
        ("auto.warm_start=encoder:nope", "policy.auto.warm_start.sites[0].blueprint"),
        ("auto.warm_start=:lora", "policy.auto.warm_start.sites[0].region"),
        ("auto.warm_start_exit=-1", "policy.auto.warm_start.exit_boundary"),
        ("auto.plateau_window=-1", "policy.auto.plateau_window"),
    ):
        assert main(["policy", "run-7", "--auto", "on", "--set", setting, "--server", server.address, "--json"]) == 3
        error = json.loads(capsys.readouterr().out)["error"]
        assert (error["reason"], error["field"]) == (reasons.INVALID_FIELD, field)


def test_warm_start_too_many_sites_refused(job, client):
    """More warm-start sites than derived command ids allow are refused."""
    policy = client.get_policy("run-7")
    policy.auto.enabled = True
    policy.auto.warm_start.sites.add(region="encoder")
    for _ in range(16):
        policy.auto.warm_start.sites.add(region="decoder")
    with pytest.raises(NarsetError) as refused:
        client.set_policy("run-7", policy)
    assert refused.value.field == "policy.auto.warm_start.sites"


def test_step_time_statistic_is_robust_on_both_ends():
    """G5's ratio is the low median of the life's step times over the median of those before the deploy."""
    assert step_time_statistic([], [2.0]) == Reading(None, 1)
    assert step_time_statistic([2.0], []) == Reading(None, 0)
    assert step_time_statistic([2.0, 2.0, 9.0], [2.2]) == Reading(pytest.approx(1.1), 1)
    assert step_time_statistic([2.0], [2.0, 3.8]) == Reading(1.0, 2)
    assert step_time_statistic([2.0], [2.04, 3.8, 2.1, 3.2, 2.06]) == Reading(pytest.approx(1.05), 5)
    assert step_time_statistic([2.0], [3.4, 2.04, 3.6]) == Reading(pytest.approx(1.7), 3)


def test_one_slow_interval_before_or_after_the_deploy_does_not_prune(job):
    """A lucky fast interval before the deploy and a slow one in the scaffold's life do not decide G5: FUSE."""
    for step_time_ms in (2.0, 1.0):  # 1.0 alone as the base would make every later interval look 2x slower
        job.report(1.0, step_time_ms=step_time_ms)
    job.deploy()
    assert [c.command_id for c in job.report(1.0, step_time_ms=2.0).commands] == ["sc"]
    for age, step_time_ms in enumerate((2.04, 3.8, 2.1)):
        job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=age)], step_time_ms=step_time_ms)
    evaluating = live(S.SCAFFOLD_STAGE_EVALUATING, age=3)
    [decision] = job.report(0.7, [evaluating], step_time_ms=3.48).decisions
    assert decision.outcome == S.DECISION_OUTCOME_FUSE, decision.reason
    [step_time] = [v for v in decision.verdicts if v.gate == "G5.step_time"]
    assert (step_time.value, step_time.samples, step_time.passed) == (pytest.approx(1.05), 4, True)


def test_slow_on_most_boundaries_prunes_with_sample_count(job):
    """A step time over the limit on most boundaries prunes, the reason naming the ratio and the sample count."""
    deployed(job)
    for age, step_time_ms in enumerate((3.4, 2.04)):
        job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=age)], step_time_ms=step_time_ms)
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, age=2)], step_time_ms=3.6).decisions
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE
    assert decision.reason == "hard gate(s) failed: G5.step_time=1.7 (limit 1.5; low median of 3 boundaries)"


def test_never_timed_step_time_prunes_as_unmeasured(job):
    """A scaffold whose life has no reported step time fails G5 as unmeasured."""
    deployed(job)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=0)], step_time_ms=None)
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, age=1)], step_time_ms=None).decisions
    assert decision.reason == "hard gate(s) failed: G5.step_time unmeasured"


def test_diversity_is_judged_against_the_host_where_the_host_is_below_the_minimum(job):
    """A scaffold on a host with correlated features passes G4.diversity if it does not lower the host's."""
    deployed(job, losses=(1.0, 1.0, 1.0))
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, gates(diversity=0.46, host_diversity=0.3), age=0)])
    repaired = live(S.SCAFFOLD_STAGE_EVALUATING, gates(diversity=0.46, host_diversity=0.3), age=1)
    [decision] = job.report(0.7, [repaired]).decisions
    assert decision.outcome == S.DECISION_OUTCOME_FUSE, decision.reason
    [diversity] = [v for v in decision.verdicts if v.gate == "G4.diversity"]
    assert (diversity.threshold, diversity.passed) == (0.3, True)


def test_diversity_below_the_host_and_the_minimum_prunes(job):
    """A scaffold that lowers the site's diversity below the host's own, and below the minimum, fails G4."""
    deployed(job, losses=(1.0, 1.0, 1.0))
    collapsed = gates(diversity=0.2, host_diversity=0.7)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, collapsed, age=0)])
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, collapsed, age=1)]).decisions
    assert decision.reason == "hard gate(s) failed: G4.diversity=0.2 (limit 0.6)"


def test_deploy_is_dated_to_the_boundary_that_applied_it(job, client):
    """The first report of a scaffold (age 0, one boundary after its deploy was applied) dates the deploy back."""
    deployed(job)  # applied at boundary 3, whose report was measured before the scaffold existed
    job.report(0.8, [live(S.SCAFFOLD_STAGE_GRAFTING, age=0)])
    assert client.get_scaffold("run-7", "sc").deployed_boundary == 3
