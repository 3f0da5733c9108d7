"""Kasmina: the execution plane that deploys, schedules, teaches and folds scaffolds in a job's model.

See docs/kasmina.md. The public names are re-exported here; the modules behind them are private.
"""

from kasmina_worker.link.report import BoundarySummary, ScaffoldSummary
from kasmina_worker.link.transport import CommandSource, LocalQueue
from kasmina_worker.measure.breakers import BreakerConfig
from kasmina_worker.runtime.teaching import ProbeLoss
from kasmina_worker.seeds.blueprints import BlueprintSpec, BuildContext, Seed, blueprint_names, register_blueprint
from kasmina_worker.seeds.fold import FoldError
from kasmina_worker.seeds.hosts import Conv1D, TopKMoE, moe_combine
from kasmina_worker.seeds.scaffold import Scaffold
from kasmina_worker.worker import KasminaWorker, WorkerConfig

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
