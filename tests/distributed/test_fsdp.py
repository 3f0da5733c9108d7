"""FSDP2 (fully_shard, gloo, 2 ranks): lifecycle on sharded parameters, DCP save and resume."""

from __future__ import annotations

import pytest
from dist_testing import run_torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("fsdp")
    ckpt = str(root / "ckpt")
    full = run_torchrun("fsdp_lifecycle.py", root / "full.json", "--ckpt", ckpt)
    resumed = run_torchrun("fsdp_lifecycle.py", root / "resumed.json", "--ckpt", ckpt, "--resume")
    return full, resumed


def test_fsdp_fold_parity_and_rollback_on_sharded_params(runs):
    """Folds at alpha 0.25 on a sharded model keep the output within 1e-5; rollback is bit-exact;
    every parameter is a DTensor again after each boundary (asserted in the script)."""
    full, _ = runs
    assert full["fold_alpha"] == {"7": 0.25, "9": 0.25}
    assert max(full["parity"].values()) <= 1e-5
    assert full["rollback_exact"] is True
    assert full["optimizer_params"] == 4  # the seed's group left with the final fold


def test_fsdp_dcp_resume_matches_uninterrupted_run(runs):
    """A DCP save at boundary 5 resumed in fresh processes ends with bit-identical parameters."""
    full, resumed = runs
    assert resumed["resumed_from"] == 5
    assert resumed["final"] == full["final"]
    assert resumed["parity"] == full["parity"]
