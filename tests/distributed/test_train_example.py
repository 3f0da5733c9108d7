"""deploy/train_example.py under torchrun (local mode): the example a user launches works."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_testing import run_torchrun

pytestmark = pytest.mark.slow

EXAMPLE = str(Path(__file__).resolve().parents[2] / "deploy" / "train_example.py")


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_train_example_deploys_and_folds_on_two_ranks(tmp_path, wrap):
    """A local deploy at boundary 1 and its fold at boundary 5 are applied once, with one rebuild each."""
    run = run_torchrun(
        EXAMPLE, tmp_path / "out.json", "--steps", "60", "--ckpt-every", "10", "--wrap", wrap,
        "--local-deploy", "fc2:lora", "--local-fold-at", "5",
    )  # fmt: skip
    assert run["applied"] == ["local-deploy", "local-fold"]
    assert run["boundary"] == 6 and run["scaffolds"] == []
    assert run["final_loss"] < 2.0
    if wrap == "ddp":
        assert run["rebuilds"] == 2
