"""Exit decisions from gate telemetry, driven through the real exchange."""

from __future__ import annotations

import json

import grpc
import pytest
from narset_testing import PASSING, Job, deployed, gates, live

from narset.cli import main
from narset.client import NarsetError
from narset.contract import reasons
from narset.contract.scaffold_policy import DEFAULT_GATES
from narset.control.judge import NOISE_FACTOR, Reading, judge, residual_gain, trend_slope
from narset.v1 import command_pb2, telemetry_pb2

# Each test that uses the store runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.backends

S = telemetry_pb2


def test_trend_and_residual_gain():
    """G2 credits only improvement beyond the pre-deploy trend; a rising trend is not credited."""
    assert trend_slope([1.0, 0.9, 0.8]) == pytest.approx(-0.1)
    assert residual_gain([1.0, 0.9, 0.8], 0.5, age_ckpts=2) == pytest.approx((0.6 - 0.5) / 0.8)
    assert residual_gain([1.0, 1.1, 1.2], 1.1, age_ckpts=2) == pytest.approx(0.1 / 1.2)
    assert residual_gain([], 0.5, 2) is None
    assert residual_gain([1.0], None, 2) is None


def test_unmeasured_gate_fails():
    """A gate whose value is missing has no value and does not pass."""
    judgement = judge(gates(foldability=None), DEFAULT_GATES, 0.1, Reading(1.0, 1))
    g3 = next(v for v in judgement.verdicts if v.gate == "G3")
    assert not g3.HasField("value") and not g3.passed
    assert judgement.soft_failures == ["G3"]


def test_all_gates_pass_at_ttl_fuses(server, job, capsys):
    """At EVALUATING with every gate passing, the answer to that very report carries a gates-issued fold."""
    deployed(job)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=1)])
    response = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, age=2)])
    [decision] = response.decisions
    assert decision.outcome == S.DECISION_OUTCOME_FUSE
    assert all(v.passed for v in decision.verdicts)
    assert [(c.WhichOneof("action"), c.issued_by) for c in response.commands] == [("fold", "narset:gates")]
    assert main(["decisions", "run-7", "--server", server.address, "--json"]) == 0
    [stored] = json.loads(capsys.readouterr().out)["decisions"]
    assert stored["outcome"] == "DECISION_OUTCOME_FUSE"
    assert stored["thresholds"]["foldability_theta"] == 0.9
    assert {v["gate"] for v in stored["verdicts"]} >= {"G1", "G2", "G3", "G4.jitter", "G5.memory"}


def test_prefer_prune_prunes_without_embargo(job, client):
    """With exit policy prefer_prune, passing gates lead to PRUNE, which is not a failure (no embargo)."""
    for loss in (1.0, 0.95):
        job.report(loss)
    job.deploy(policy=command_pb2.ScaffoldPolicy(exit_policy=command_pb2.EXIT_POLICY_PREFER_PRUNE))
    job.report(0.9)
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, age=1)]).decisions
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE
    assert client.get_job("run-7").embargoes == []


def test_safety_flag_prunes_at_once_and_embargoes_region(job, client):
    """A NaN flag prunes immediately; the region is embargoed 3 boundaries, refused then accepted."""
    deployed(job)
    response = job.report(0.8, [live(S.SCAFFOLD_STAGE_GRAFTING, gates(non_finite=True), age=1)])
    [decision] = response.decisions
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE and "non_finite" in decision.reason
    [prune] = response.commands
    assert prune.prune.immediate
    [embargo] = client.get_job("run-7").embargoes
    assert (embargo.region, embargo.until_boundary, embargo.failures) == ("encoder", job.boundary + 3, 1)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_PRUNED, age=2)])
    retry = command_pb2.AdaptationCommand(job_id="run-7", deploy={"module": "encoder.fc2", "blueprint": "lora"})
    while job.boundary < embargo.until_boundary:
        with pytest.raises(NarsetError) as refused:
            client.submit(retry)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details.startswith("deploy.region: region 'encoder' is under embargo")
        assert (refused.value.reason, refused.value.field) == (reasons.REGION_EMBARGOED, "deploy.region")
        job.report(0.8)
    assert client.submit(retry).record.state == command_pb2.COMMAND_STATE_PENDING


def test_second_failure_doubles_embargo(job, client):
    """A repeat failure in the same region embargoes it for twice as long."""
    deployed(job)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, gates(memory_fraction=0.97), age=1)])  # judged at the exit
    [first] = job.report(0.8, [live(S.SCAFFOLD_STAGE_EVALUATING, gates(memory_fraction=0.97), age=2)]).decisions
    assert first.outcome == S.DECISION_OUTCOME_PRUNE
    assert first.reason == "hard gate(s) failed: G5.memory=0.97 (limit 0.9)"
    job.report(0.8, [live(S.SCAFFOLD_STAGE_PRUNED, age=3)])
    for _ in range(3):
        job.report(0.8)
    job.deploy(command_id="sc2")
    job.report(0.8)
    [decision] = job.report(
        0.8, [live(S.SCAFFOLD_STAGE_EVALUATING, gates(jitter_p95=0.5), age=1, scaffold_id="sc2")]
    ).decisions
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE and "G4.jitter" in decision.reason
    [embargo] = client.get_job("run-7").embargoes
    assert (embargo.failures, embargo.until_boundary) == (2, job.boundary + 6)


def test_unmeasured_hard_gate_at_ttl_prunes(job):
    """At the exit, an unmeasured hard gate is a failure: PRUNE."""
    deployed(job)
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, gates(drift=None), age=1)]).decisions
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE
    assert decision.reason == "hard gate(s) failed: G4.drift unmeasured"


def test_persist_twice_then_final_decision(job):
    """A soft failure while G2 shows benefit persists +3 at most twice, never past 2x TTL, then decides."""
    deployed(job, losses=(1.0, 1.0, 1.0))  # flat before the deploy: any later gain is the scaffold's
    soft_fail = gates(foldability=0.5)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, soft_fail, age=1)])
    outcomes = []
    for ttl, extensions in ((12, 0), (15, 1), (18, 2)):
        response = job.report(0.6, [live(S.SCAFFOLD_STAGE_EVALUATING, soft_fail, ttl, ttl, extensions)])
        [decision] = response.decisions
        outcomes.append(decision.outcome)
        job.report(0.6, [live(S.SCAFFOLD_STAGE_HOLD, soft_fail, ttl, ttl + 3, extensions + 1)])
    assert outcomes == [S.DECISION_OUTCOME_PERSIST, S.DECISION_OUTCOME_PERSIST, S.DECISION_OUTCOME_PRUNE]
    assert "no extension left" in decision.reason


def test_soft_failure_without_benefit_prunes(job):
    """A soft failure with G2 showing no benefit (host no better than its trend) prunes."""
    deployed(job, losses=(1.0, 0.9, 0.8))
    [decision] = job.report(0.8, [live(S.SCAFFOLD_STAGE_EVALUATING, gates(foldability=0.5), age=0)]).decisions
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE
    assert "G2 shows no benefit" in decision.reason


def test_hand_fold_against_failing_gate_needs_force(server, job, client, capsys):
    """An operator fold that a gate would refuse is refused without --force, recorded as forced with it."""
    deployed(job)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, gates(foldability=0.2), age=1)])
    base = ["fold", "run-7", "--module", "encoder.fc1", "--server", server.address]
    assert main(base) == 3
    assert "fold.force: gate(s) " in capsys.readouterr().err
    assert main([*base, "--json"]) == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["reason"], error["field"]) == (reasons.GATE_FAILING, "fold.force")
    # Claiming to be the decision engine, which has judged the gates already, no longer skips them.
    assert main([*base, "--issued-by", "narset:gates", "--json"]) == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["code"], error["reason"]) == ("PERMISSION_DENIED", reasons.RESERVED_ISSUER)
    assert client.list_decisions("run-7") == []
    assert main([*base, "--force", "--reason", "deadline"]) == 0
    capsys.readouterr()
    [decision] = client.list_decisions("run-7")
    assert decision.forced and decision.issued_by == "anonymous"  # the caller's identity: no tokens here
    assert decision.reason.startswith("deadline (forced past") and "G3" in decision.reason
    [record] = client.list_commands("run-7", [command_pb2.COMMAND_STATE_PENDING])
    assert record.forced


def test_breaker_prune_in_the_job_embargoes_region(job, client):
    """A scaffold the job's breaker pruned is recorded as a PRUNE decision and embargoes its region."""
    deployed(job)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=1)])
    flagged = live(S.SCAFFOLD_STAGE_PRUNED, gates(loss_spike=True), age=2)
    job.report(0.8, [flagged])
    [decision] = client.list_decisions("run-7")
    assert (decision.outcome, decision.issued_by) == (S.DECISION_OUTCOME_PRUNE, "kasmina:breaker")
    assert "loss_spike" in decision.reason
    [embargo] = client.get_job("run-7").embargoes
    assert embargo.region == "encoder" and embargo.failures == 1


def test_persist_if_wins_extends_while_extensions_remain(job):
    """Exit policy persist_if_wins: passing gates persist the scaffold until extensions run out, then fuse."""
    for loss in (1.0, 1.0):
        job.report(loss)
    job.deploy(policy=command_pb2.ScaffoldPolicy(exit_policy=command_pb2.EXIT_POLICY_PERSIST_IF_WINS))
    job.report(1.0)
    job.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=1)])
    outcomes = []
    for ttl, extensions in ((12, 0), (15, 1), (18, 2)):
        [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, PASSING, ttl, ttl, extensions)]).decisions
        outcomes.append(decision.outcome)
        job.report(0.7, [live(S.SCAFFOLD_STAGE_HOLD, PASSING, ttl, ttl + 3, extensions + 1)])
    assert outcomes == [S.DECISION_OUTCOME_PERSIST, S.DECISION_OUTCOME_PERSIST, S.DECISION_OUTCOME_FUSE]


@pytest.mark.parametrize(
    ("jitter", "drift", "outcome"),
    [
        (0.6, 0.3, S.DECISION_OUTCOME_FUSE),  # as noisy as the job was: far above the policy's 0.05
        (0.9, 0.3, S.DECISION_OUTCOME_PRUNE),  # jitter over NOISE_FACTOR x the job's own noise
        (0.6, 0.5, S.DECISION_OUTCOME_PRUNE),  # drift over NOISE_FACTOR x the job's step change
    ],
)
def test_g4_limits_allow_the_jobs_own_step_noise(worker_stub, client, jitter, drift, outcome):
    """G4 fails a scaffold for making the step loss noisier than the job was before its deploy, never for the
    job's own noise: jitter is allowed NOISE_FACTOR x the pre-deploy step change relative to today's mean
    loss, drift NOISE_FACTOR x that step change; the verdict's threshold is the limit applied."""
    job = Job(worker_stub, client)
    noisy = {"loss_noise": 0.2, "loss_mean": 1.0}  # p95 |L_t - L_t-1| 0.2: a mini-batch job
    for loss in (1.0, 0.95):
        job.report(loss, **noisy)
    job.deploy()
    job.report(0.9, **noisy)
    telemetry = gates(jitter_p95=jitter, drift=drift)
    [decision] = job.report(
        0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, telemetry, age=1)], loss_noise=0.5, loss_mean=0.5
    ).decisions
    limits = {v.gate: v.threshold for v in decision.verdicts}
    assert limits["G4.jitter"] == pytest.approx(NOISE_FACTOR * 0.2 / 0.5)
    assert limits["G4.drift"] == pytest.approx(NOISE_FACTOR * 0.2)
    assert decision.outcome == outcome


def test_g4_limits_are_the_policys_without_reported_noise(job):
    """A job that reports no loss noise is judged on the policy's own G4 limits."""
    deployed(job)
    [decision] = job.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, gates(jitter_p95=0.06), age=1)]).decisions
    limits = {v.gate: v.threshold for v in decision.verdicts}
    assert (limits["G4.jitter"], limits["G4.drift"]) == (DEFAULT_GATES.jitter_p95_max, DEFAULT_GATES.drift_max)
    assert decision.outcome == S.DECISION_OUTCOME_PRUNE and "G4.jitter" in decision.reason
