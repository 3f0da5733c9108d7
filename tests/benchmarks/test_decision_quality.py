"""The decision-quality benchmark's quick mode runs end to end against a real Narset and decides its cases right."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_decisions_are_right() -> None:
    """Every quick case gets a policy deploy and an exit decision, both runs measured, and the oracle's exit."""
    argv = [sys.executable, str(REPO / "benchmarks" / "decision_quality.py"), "--quick", "--json"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Warning" not in done.stderr, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["cases"] == len(summary["rows"]) == 4
    for row in summary["rows"]:
        assert row["deployed_at"] is not None and row["decided_at"] > row["deployed_at"], row
        assert set(row["test_loss"]) == {"FUSE", "PRUNE"}, row
        assert all(math.isfinite(v) for v in row["test_loss"].values()), row
        assert row["oracle"] == row["engineered"], row  # the engineered cases are what they claim
    assert summary["right"] == 4, summary["rows"]
    assert summary["mean_test_loss"]["narset"] == pytest.approx(summary["mean_test_loss"]["oracle"])
