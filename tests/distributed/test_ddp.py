"""DDP (gloo, 2 ranks): lifecycle, leader broadcast, rank agreement, rebuilds, averaged seed gradients."""

from __future__ import annotations

import pytest
from dist_testing import run_torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    return run_torchrun("ddp_lifecycle.py", tmp_path_factory.mktemp("ddp") / "result.json")


def test_ddp_params_bit_identical_and_rebuilt_only_on_structural_change(ddp_run):
    """After every boundary all parameters agree bit for bit (asserted in the script); a boundary
    rebuilds the DDP wrapper exactly when its structure changed: deploy, frozen host, weaning, fold."""
    rows = ddp_run["rows"]
    assert [r["rebuilt"] for r in rows] == [int(r["changed"]) for r in rows]
    assert [r["boundary"] for r in rows if r["changed"]] == [1, 2, 5, 7]
    assert ddp_run["rebuilds"] == 4
    assert all(r["ddp"] == "DistributedDataParallel" for r in rows)


def test_ddp_only_rank0_commands_apply(ddp_run):
    """A command submitted on rank 1 only is ignored; rank 0's are applied once on every rank."""
    assert ddp_run["rows"][-1]["applied"] == ["d1", "f1"]


def test_ddp_seed_gradients_are_averaged(ddp_run):
    """Seed (and host) gradients equal one process's on the concatenated batch within 1e-6 relative."""
    assert ddp_run["seed_grad_checks"] >= 10
    assert ddp_run["seed_grad_rel_err"] <= 1e-6
    assert ddp_run["host_grad_rel_err"] <= 1e-6


def test_ddp_fold_parity(ddp_run):
    """The fold at alpha 0.25 (mid-weaning) keeps the model's output within the fp32 bound 1e-5."""
    fold_row = next(r for r in ddp_run["rows"] if r["boundary"] == 6)
    assert fold_row["alpha"]["d1"] == 0.25
    assert ddp_run["fold_rel_err"] <= 1e-5


def test_ddp_disagreement_names_the_rank(ddp_run):
    """A rank with a different module tree or applied set makes every rank raise, naming it."""
    assert "ranks [1]" in ddp_run["tree_error"] and "module extra Linear" in ddp_run["tree_error"]
    assert "ranks [1]" in ddp_run["applied_error"] and "bogus" in ddp_run["applied_error"]
