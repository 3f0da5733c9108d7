"""The step-overhead and boundary-cost benchmarks run end to end at a toy size and print what they claim to."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> str:
    argv = [sys.executable, str(REPO / "benchmarks" / script), *args]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_step_overhead_compares_every_form_at_both_widths() -> None:
    """Both widths time all six forms (the benchmark asserts they compute the same function) and print every ratio
    and the width verdict."""
    out = _run("step_overhead.py", "--widths", "32", "64", "--depth", "2", "--batch", "16", "--rounds", "3")
    for width in (32, 64):
        assert f"width {width}: rank-16 LoRA" in out
    for label in ("Kasmina / hand-written", "Kasmina / PEFT LoRA", "Kasmina, breakers off / hand-written"):
        assert len(re.findall(rf"{re.escape(label)}.* \d+\.\d+x \(interquartile", out)) == 2, label
    assert re.search(r"Kasmina's extra: .* (holds|misses)", out)


@pytest.mark.slow
def test_boundary_cost_runs_one_probe_pass_plus_one_per_scaffold() -> None:
    """With 2 probe batches a boundary sends 2, 4 and 8 batches through the model for 0, 1 and 3 live scaffolds."""
    out = _run("boundary_cost.py", "--width", "32", "--probe-batches", "2", "--boundaries", "2")
    rows = {int(m[1]): int(m[2]) for m in re.finditer(r"^\s+(\d)\s+[\d.]+\s+[\d.]+\s+(\d+)$", out, re.MULTILINE)}
    assert rows == {0: 2, 1: 4, 3: 8}, out
