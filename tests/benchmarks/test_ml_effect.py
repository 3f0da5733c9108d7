"""The evidence harness's quick mode runs end to end: every run trains, every scaffold leaves, and the
report has the expected structure with finite numbers. Nothing here asserts the sign of an effect."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _harness() -> ModuleType:
    """benchmarks/ml_effect.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("ml_effect", REPO / "benchmarks" / "ml_effect.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))  # its sibling evidence_doc, as when run as a script
    sys.modules["ml_effect"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _interval_ok(interval: dict, n: int) -> bool:
    values = (interval["low"], interval["mean"], interval["high"])
    return all(_finite(v) for v in values) and values == tuple(sorted(values)) and interval["n"] == n


@pytest.mark.slow
def test_quick_study(tmp_path: Path) -> None:
    argv = [sys.executable, str(REPO / "benchmarks" / "ml_effect.py"), "--quick", "--json", "--out-dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout)
    config = results["config"]
    seeds, factors = config["seeds"], config["lr_factors"]
    assert [t["name"] for t in config["tasks"]] == ["digits-mlp"]
    assert len(seeds) == 2 and len(factors) >= 3

    fits = results["fits"]["digits-mlp"]
    for blueprint in ("lora", "dense_delta", "residual_mlp"):
        assert fits[blueprint] == "", fits[blueprint]
    assert fits["moe_expert"]  # refused on a Linear, with the worker's reason
    expected = ["baseline", *(b for b, refusal in fits.items() if not refusal), "best-guess"]
    rows = results["summary"]["digits-mlp"]
    assert [row["condition"] for row in rows] == expected

    runs = results["runs"]
    assert len(runs) == len(expected) * len(factors) * len(seeds)
    boundaries = config["tasks"][0]["intervals"] + 1
    for run in runs:
        assert 0.0 <= run["test_acc"] <= 1.0 and _finite(run["test_loss"]), run
        assert len(run["val_curve"]) == boundaries and all(_finite(v) for v in run["val_curve"])
        assert all(_finite(v) and v > 0 for v in run["interval_ms"])
        if run["condition"] != "baseline":
            assert len(run["scaffolds"]) == 2 and run["live_at_end"] == 0, run["scaffolds"]
            assert all(s["deployed_at"] == config["deploy_at"] and s["exit"] for s in run["scaffolds"])
        if run["condition"] in fits:  # exits decided by Narset, each decision recorded
            assert len(run["decisions"]) >= 2, run["decisions"]

    for row in rows[1:]:
        for key in ("d_acc_same", "d_acc_tuned", "d_loss_same", "d_loss_tuned"):
            assert _interval_ok(row[key], len(seeds)), (row["condition"], key, row[key])
        assert _finite(row["step_ratio"]) and _finite(row["wall_ratio"])
        assert row["lr_chosen"] in [config["tasks"][0]["base_lr"] * f for f in factors]

    markdown = (tmp_path / "evidence.md").read_text(encoding="utf-8")
    assert markdown.count("<!-- ml-effect:start -->") == 1 and markdown.count("<!-- ml-effect:end -->") == 1
    assert "python benchmarks/ml_effect.py --quick" in markdown and "#### digits-mlp" in markdown
    assert (tmp_path / "ml_effect_curves.png").read_bytes().startswith(b"\x89PNG")


def test_section_replaces_only_its_own(tmp_path: Path) -> None:
    harness = _harness()
    path = tmp_path / "evidence.md"
    path.write_text("# Evidence\n\n<!-- other:start -->\nother\n<!-- other:end -->\n", encoding="utf-8")
    harness.write_section(f"{harness.START}\nfirst\n{harness.END}\n", path)
    harness.write_section(f"{harness.START}\nsecond\n{harness.END}\n", path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Evidence\n\n<!-- other:start -->\nother\n<!-- other:end -->\n")
    assert "second" in text and "first" not in text and text.count(harness.START) == 1
