"""Resume in a fresh process is bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _run(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    done = subprocess.run([sys.executable, str(HERE / "resume_job.py"), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path):
    """Run B (save at a boundary, load in a new process with weights_only, continue) ends with A's exact parameters."""
    _run("all", str(tmp_path / "a.pt"))
    _run("first", str(tmp_path))
    _run("second", str(tmp_path), str(tmp_path / "b.pt"))
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys() and "fc1.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = torch.load(tmp_path / "worker.pt", weights_only=True)
    assert saved["version"] == 2 and saved["boundary"] == 4
    assert {s["scaffold_id"] for s in saved["scaffolds"]} == {"lora", "mlp"}
