"""Kasmina: the execution plane that deploys, schedules, teaches and folds scaffolds in a job's model.

See docs/kasmina.md. The public names are re-exported here; the modules behind them are private.
They are imported on first use (PEP 562), so that a process needing only a torch-free part of the
package, the worker link's child (`python -m kasmina_worker.link`), starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_SOURCES = {
    "BlueprintSpec": "kasmina_worker.seeds.blueprints",
    "BoundarySummary": "kasmina_worker.link.report",
    "BreakerConfig": "kasmina_worker.measure.breakers",
    "BuildContext": "kasmina_worker.seeds.blueprints",
    "CommandSource": "kasmina_worker.link.transport",
    "Conv1D": "kasmina_worker.seeds.hosts",
    "FoldError": "kasmina_worker.seeds.fold",
    "KasminaWorker": "kasmina_worker.worker",
    "LocalQueue": "kasmina_worker.link.transport",
    "ProbeLoss": "kasmina_worker.runtime.teaching",
    "Scaffold": "kasmina_worker.seeds.scaffold",
    "ScaffoldSummary": "kasmina_worker.link.report",
    "Seed": "kasmina_worker.seeds.blueprints",
    "TopKMoE": "kasmina_worker.seeds.hosts",
    "WorkerConfig": "kasmina_worker.worker",
    "blueprint_names": "kasmina_worker.seeds.blueprints",
    "moe_combine": "kasmina_worker.seeds.hosts",
    "register_blueprint": "kasmina_worker.seeds.blueprints",
}

__all__ = [
    "BlueprintSpec",
    "BoundarySummary",
    "BreakerConfig",
    "BuildContext",
    "CommandSource",
    "Conv1D",
    "FoldError",
    "KasminaWorker",
    "LocalQueue",
    "ProbeLoss",
    "Scaffold",
    "ScaffoldSummary",
    "Seed",
    "TopKMoE",
    "WorkerConfig",
    "blueprint_names",
    "moe_combine",
    "register_blueprint",
]

if TYPE_CHECKING:
    from kasmina_worker.link.report import BoundarySummary, ScaffoldSummary
    from kasmina_worker.link.transport import CommandSource, LocalQueue
    from kasmina_worker.measure.breakers import BreakerConfig
    from kasmina_worker.runtime.teaching import ProbeLoss
    from kasmina_worker.seeds.blueprints import BlueprintSpec, BuildContext, Seed, blueprint_names, register_blueprint
    from kasmina_worker.seeds.fold import FoldError
    from kasmina_worker.seeds.hosts import Conv1D, TopKMoE, moe_combine
    from kasmina_worker.seeds.scaffold import Scaffold
    from kasmina_worker.worker import KasminaWorker, WorkerConfig


def __getattr__(name: str) -> object:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'kasmina_worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
