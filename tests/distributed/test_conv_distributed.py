"""Conv2d hosts under DDP and FSDP2 (gloo, 2 ranks): conv_branch (BatchNorm) and conv lora deploy, train, fold,
roll back and fold again with every rank identical."""

from __future__ import annotations

import pytest
from dist_testing import run_torchrun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def conv_run(request, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp(f"conv-{request.param}") / "result.json"
    return run_torchrun("conv_lifecycle.py", out, "--wrap", request.param)


def test_conv_ranks_stay_identical_through_deploy_training_folds_and_rollback(conv_run):
    """After every boundary every parameter and buffer, the seeds' BatchNorm statistics included, is bit-identical
    on both ranks (asserted in the script), although each rank's BatchNorms saw only its own images in between."""
    assert conv_run["wrapper"] in ("DistributedDataParallel", "FSDPConvNet")
    assert conv_run["applied"] == ["branch", "lora", "f1", "f2", "r1", "f3"]
    assert conv_run["live_at_end"] == []
    assert all(conv_run["differ_before"][str(b)] for b in (2, 3, 4, 5))  # the boundary's broadcast is needed


def test_conv_folds_are_exact_on_every_rank(conv_run):
    """The folds of the conv_branch and the conv lora (and the conv_branch again after its rollback) keep the
    eval-mode output within 1e-5 relative; the worker's own parity measurement agrees; rollback is bit-exact."""
    assert set(conv_run["parity"]) == {"5", "7"}
    assert max(conv_run["parity"].values()) <= 1e-5
    assert all(abs(1.0 - p) <= 1e-5 for parities in conv_run["measured_parity"].values() for p in parities)
    assert conv_run["rollback_exact"] is True
