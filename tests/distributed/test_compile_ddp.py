"""torch.compile + DDP (gloo, 2 ranks): no recompile between boundaries, one per structural change."""

from __future__ import annotations

import pytest
from dist_testing import run_torchrun

pytestmark = pytest.mark.slow


def test_compiled_ddp_recompiles_once_per_structural_change(tmp_path):
    """100 steps, a boundary every 5, alpha changing at every boundary of the scaffold's life:
    every step but the first after a rebuild runs under fail_on_recompile, and the number of
    compiles equals the number of structural changes (deploy, frozen host, weaning, fold)."""
    run = run_torchrun("compile_ddp.py", tmp_path / "result.json")
    assert run["structural"] == 4
    assert run["compiles"] == run["structural"] == run["rebuilds"]
    live = run["alphas"][:16]  # boundaries 1-16; 17 folds (the summary shows the leaving scaffold)
    assert all(a != b for a, b in zip(live, live[1:], strict=False)), live
    assert run["alphas"][17:] == [None, None, None]
