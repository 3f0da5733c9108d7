"""`narset demo --json` on a fresh install: the whole loop and the honest comparison, as one JSON document."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EXITS = ("DECISION_OUTCOME_FUSE", "DECISION_OUTCOME_PRUNE")


def test_demo_json_shows_warm_start_gates_exits_and_both_baselines():
    """Without a warning the demo shows the warm start, alpha, gates, exits at the set boundary and both baselines."""
    done = subprocess.run(
        # 3 seeds (the default is 5) keep the test within a minute on a busy 2-core machine.
        [sys.executable, "-m", "narset", "demo", "--json", "--seeds", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr[-2000:]
    document = json.loads(done.stdout)
    deploys = [d for d in document["decisions"] if d["outcome"] == "DECISION_OUTCOME_DEPLOY"]
    assert [(d["issued_by"], d["reason"].split(":")[0]) for d in deploys] == [("policy:tactical", "warm start")] * 2
    exit_boundary = 1 + round(document["config"]["max_boundaries"] * 5 / 6)
    exits = [d for d in document["decisions"] if d["outcome"] in EXITS]
    assert {int(d["boundary"]) for d in exits} == {exit_boundary}, document["decisions"]  # int64: a JSON string
    assert document["deployed_at_boundary"] is not None and document["exit_at_boundary"] >= exit_boundary
    lived = [s for row in document["boundaries"] for s in row["scaffolds"]]
    alphas = [s["alpha"] for s in lived if s["stage"] in ("GRAFTING", "HOLD")]
    assert alphas[0] < max(alphas), "alpha ramps up during grafting"
    measured = set().union(*(s["gates"] for s in lived if s["stage"] == "HOLD"))
    assert {"transfer_rel_delta", "foldability", "jitter_p95", "drift", "diversity", "step_time_ratio"} <= measured
    assert lived[-1]["stage"] in ("FUSED", "PRUNED")
    comparison = document["comparison"]
    seeds = document["config"]["seeds"]
    for condition in ("baseline", "retuned_baseline", "with_scaffold"):
        accuracy = comparison[condition]["test_accuracy"]
        assert len(accuracy["per_seed"]) == seeds and 0.8 < accuracy["mean"] <= 1.0
    assert comparison["retuned_baseline"]["lr"] in comparison["lr_grid"]
    scaffolded, baseline = (comparison[c]["test_accuracy"]["per_seed"] for c in ("with_scaffold", "baseline"))
    paired = [a - b for a, b in zip(scaffolded, baseline, strict=True)]
    assert comparison["difference_vs_baseline"]["per_seed"] == pytest.approx(paired)
    assert len(document["exits"]) == seeds and all(document["exits"])
