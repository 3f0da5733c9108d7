"""The used-by flow across processes: `narset serve`, a training job, and the `narset` CLI."""

from __future__ import annotations

import pytest
from e2e_testing import TrainingJob, cli_deploy, cli_json, narset_cli

pytestmark = pytest.mark.slow

# Lenient on the noisy measures of a 2-core shared machine (step time), on G2, which these short
# runs cannot earn, and on G4's jitter: with the host training jointly, this job's minibatch losses
# move by about 6% per step (measured 0.060 against the default 0.05). The thresholds are per deploy,
# and the tests check the mechanics they drive; the gates' own behaviour is tested in tests/kasmina.
LENIENT = ["--gamma", "-1", "--step-time-max", "100", "--jitter-max", "0.5"]


def run_until(job: TrainingJob, done, limit: int = 40) -> list[dict]:
    """Advance boundary by boundary until `done(summary)` holds (at most `limit` boundaries)."""
    seen = []
    for _ in range(limit):
        seen.append(job.boundary())
        if done(seen[-1]):
            return seen
        job.order("next")
    raise AssertionError(f"condition not reached in {limit} boundaries: {seen[-1]}")


@pytest.fixture
def job(narset_server, tmp_path):
    job = TrainingJob(narset_server.address, "run-7", tmp_path / "ckpt.pt", "--steps-per-boundary", "10")
    job.boundary()  # attached and reported boundary 1
    yield job
    if job.process.poll() is None:
        job.kill()


def test_cli_deploy_runs_schedule_and_fuses_with_parity(narset_server, job):
    """Deploy by CLI applies at the next boundary; alpha follows the schedule; every gate is reported;
    at TTL Narset fuses; the host alone reproduces the scaffolded output and the scaffold is gone."""
    address = narset_server.address
    schedule = ["--warmup", "2", "--hold", "3", "--ttl", "5"]
    cli_deploy(address, "run-7", "fc2", "lora", "--id", "dep-1", "--param", "rank=4", *schedule, *LENIENT)
    job.order("next")
    seen = run_until(job, lambda s: any(x["stage"] == "SCAFFOLD_STAGE_FUSED" for x in s["scaffolds"]))
    assert seen[0]["results"][0]["id"] == "dep-1" and seen[0]["module_types"]["fc2"] == "Scaffold"
    fused = seen[-1]
    assert fused["module_types"]["fc2"] == "Linear"
    assert fused["fold_parity"] is not None and fused["fold_parity"] <= 1e-5
    assert job.stop() == 0

    scaffold = cli_json(address, "scaffold", "run-7", "dep-1")
    history = scaffold["history"]
    lived = [h for h in history if h["stage"] not in ("SCAFFOLD_STAGE_FUSED", "SCAFFOLD_STAGE_PRUNED")]
    # lora is micro: warm level 0.5, reached over warmup 2, held 3, then held while Narset decides.
    stages = [h["stage"].removeprefix("SCAFFOLD_STAGE_") for h in lived]
    assert stages == ["GRAFTING"] * 2 + ["HOLD"] * 3 + ["EVALUATING"] * (len(lived) - 5)
    assert [round(h["alpha"], 6) for h in lived] == [0.25, 0.5] + [0.5] * (len(lived) - 2)
    for h in lived:
        measured = set(h["gates"])
        assert {"transfer_rel_delta", "probe_loss", "foldability", "jitter_p95", "diversity"} <= measured, h
        assert {"step_time_ratio", "memory_fraction"} <= measured, h
    decisions = cli_json(address, "decisions", "run-7")["decisions"]
    assert [(d["outcome"], d["issued_by"]) for d in decisions] == [("DECISION_OUTCOME_FUSE", "narset:gates")]
    assert {v["gate"] for v in decisions[0]["verdicts"]} >= {"G1", "G2", "G3", "G4.jitter", "G5.memory"}
    table = narset_cli(address, "decisions", "run-7")
    assert "FUSE" in table.stdout and "all gates pass" in table.stdout


def test_harmful_scaffold_is_pruned_and_region_embargoed(narset_server, job):
    """A noise-injecting scaffold is pruned by the gates; its region refuses deploys until the embargo ends."""
    address = narset_server.address
    cli_deploy(address, "run-7", "fc1", "noisy", "--id", "bad")
    job.order("next")
    seen = run_until(job, lambda s: any(x["stage"] == "SCAFFOLD_STAGE_PRUNED" for x in s["scaffolds"]))
    assert seen[-1]["module_types"]["fc1"] == "Linear"
    [decision] = cli_json(address, "decisions", "run-7")["decisions"]
    assert decision["outcome"] == "DECISION_OUTCOME_PRUNE"
    [embargo] = cli_json(address, "job", "run-7")["embargoes"]
    assert embargo["region"] == "body"
    until = int(embargo["until_boundary"])
    boundary = seen[-1]["boundary"]
    while boundary < until:
        refused = narset_cli(address, "deploy", "run-7", "--module", "fc2", "--blueprint", "lora")
        assert refused.returncode == 3
        assert f"FAILED_PRECONDITION): deploy.region: region 'body' is under embargo until boundary {until}" in (
            refused.stderr
        )
        job.order("next")
        boundary = job.boundary()["boundary"]
    cli_deploy(address, "run-7", "fc2", "lora")
    assert job.stop() == 0


def test_soft_failure_persists_twice_then_decides(narset_server, job):
    """A soft gate failing while G2 shows benefit extends the TTL by 3, at most twice, never past 2x TTL."""
    address = narset_server.address
    # G1 can never pass (epsilon -1): a soft failure, while G2 passes (gamma -1).
    schedule = ["--warmup", "1", "--hold", "5", "--ttl", "6", "--epsilon", "-1"]
    cli_deploy(address, "run-7", "fc2", "lora", "--id", "keep", *schedule, *LENIENT)
    job.order("next")
    seen = run_until(job, lambda s: any(x["stage"] == "SCAFFOLD_STAGE_PRUNED" for x in s["scaffolds"]))
    decisions = cli_json(address, "decisions", "run-7")["decisions"]
    assert [d["outcome"] for d in decisions] == [
        "DECISION_OUTCOME_PERSIST",
        "DECISION_OUTCOME_PERSIST",
        "DECISION_OUTCOME_PRUNE",
    ]
    assert "no extension left" in decisions[-1]["reason"]
    scaffold = cli_json(address, "scaffold", "run-7", "keep")
    assert scaffold["ttl_ckpts"] == 12 and scaffold["extensions"] == 2  # 6 + 3 + 3 = 2x the original TTL
    assert len(seen) <= 12 + 4
    assert job.stop() == 0


def test_auto_policy_deploys_at_an_engineered_plateau(narset_server, job):
    """With the policy on and a plateau threshold no run can beat, Narset deploys by itself, with its reason."""
    address = narset_server.address
    policy = narset_cli(
        address,
        "policy",
        "run-7",
        "--auto",
        "on",
        "--set",
        "auto.plateau_window=2",
        "--set",
        "auto.plateau_rel_delta=0.9",
    )
    assert policy.returncode == 0, policy.stderr
    job.order("next")
    seen = run_until(job, lambda s: any(r["outcome"] == "COMMAND_OUTCOME_APPLIED" for r in s["results"]))
    assert seen[-1]["results"][0]["id"].startswith("auto.run-7.b")
    [decision] = cli_json(address, "decisions", "run-7")["decisions"]
    assert decision["outcome"] == "DECISION_OUTCOME_DEPLOY" and decision["issued_by"] == "policy:tactical"
    # The plateau now needs the training loss flat as well as the validation (probe) loss.
    assert decision["reason"].startswith("plateau: train_loss changed") and "probe loss" in decision["reason"]
    assert "plateau" in narset_cli(address, "decisions", "run-7").stdout
    assert job.stop() == 0
