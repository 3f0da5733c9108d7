"""`narset demo --json` on a fresh install: the whole loop, as one JSON document."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_json_shows_deploy_schedule_gates_and_exit():
    """The demo exits 0; its document shows a policy deploy, the alpha schedule, all gates, and an exit."""
    done = subprocess.run(
        [sys.executable, "-m", "narset", "demo", "--json"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    deploy = [d for d in document["decisions"] if d["outcome"] == "DECISION_OUTCOME_DEPLOY"]
    assert deploy and deploy[0]["issued_by"] == "policy:tactical"
    assert document["deployed_at_boundary"] is not None and document["exit_at_boundary"] is not None
    exits = [d for d in document["decisions"] if d["outcome"] in ("DECISION_OUTCOME_FUSE", "DECISION_OUTCOME_PRUNE")]
    assert exits, document["decisions"]
    lived = [s for row in document["boundaries"] for s in row["scaffolds"]]
    alphas = [s["alpha"] for s in lived if s["stage"] in ("GRAFTING", "HOLD")]
    assert alphas[0] < max(alphas), "alpha ramps up during grafting"
    measured = set().union(*(s["gates"] for s in lived if s["stage"] == "HOLD"))
    assert {"transfer_rel_delta", "foldability", "jitter_p95", "drift", "diversity", "step_time_ratio"} <= measured
    assert lived[-1]["stage"] in ("FUSED", "PRUNED")
    comparison = document["comparison"]
    for model in ("baseline", "with_scaffold"):
        assert 0.8 < comparison[model]["test_accuracy"] <= 1.0
