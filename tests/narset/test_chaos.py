"""The chaos campaign (benchmarks/chaos_campaign.py) in CI: 20 jobs and 1,000 commands while `narset serve`
is killed with SIGKILL at random points and restarted on the same database (issue 12)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_kill_9_loses_no_command_and_applies_none_twice_or_out_of_order(tmp_path: Path, monkeypatch):
    """Every acknowledged command is applied by its job exactly once and in submission order, across at
    least 8 kills of the server; the ledger a fresh server reads back agrees."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # benchmarks/ is no package
    figures = importlib.import_module("chaos_campaign").run(jobs=20, commands=1000, workdir=tmp_path, kills=8)
    assert (figures.jobs, figures.commands, figures.acknowledged) == (20, 1000, 1000)
    assert figures.kills >= 8 and figures.failed_exchanges > 0  # the kills cut exchanges off
    assert (figures.lost, figures.applied_twice, figures.out_of_order) == (0, 0, 0), figures
