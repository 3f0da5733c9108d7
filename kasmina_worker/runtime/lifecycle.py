"""Scaffold surgery and exits on the live model and optimiser (boundaries only).

`ScaffoldRuntime` owns the live scaffolds, the last fold records and the structural growth from
router folds; every method runs at a boundary, may synchronise, and logs one event per change.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch
from torch import nn

from kasmina_worker.measure.breakers import StepLossRing
from kasmina_worker.runtime import optim
from kasmina_worker.runtime.rates import SeedRates
from kasmina_worker.runtime.schedule import AlphaSchedule, ScheduleConfig
from kasmina_worker.seeds.blueprints import BlueprintSpec, BuildContext, get_blueprint
from kasmina_worker.seeds.fold import FoldRecord, ParamSwap, fold_delta, fold_router, unfold_delta, unfold_router
from kasmina_worker.seeds.hosts import module_info
from kasmina_worker.seeds.scaffold import Scaffold
from kasmina_worker.seeds.surgery import replace_module
from narset.contract.rules import FOLD_DEPTH
from narset.v1 import command_pb2, job_pb2, telemetry_pb2

__all__ = ["EXIT_FOLD", "EXIT_PRUNE", "EXIT_TRANSFER", "DeployPlan", "LiveScaffold", "ScaffoldRuntime"]

# How a scaffold leaves (`LiveScaffold.exit`): folded into the host, removed, or folded by transfer.
EXIT_FOLD, EXIT_PRUNE, EXIT_TRANSFER = "fold", "prune", "transfer"

log = structlog.get_logger("kasmina")


@dataclass(frozen=True, kw_only=True, slots=True)
class DeployPlan:
    """A validated deploy: everything needed to build and place the seed."""

    scaffold_id: str
    module_name: str
    spec: BlueprintSpec
    params: dict[str, float]
    policy: command_pb2.ScaffoldPolicy
    as_scaffold: bool
    learning_rate: float | None
    """The command's seed learning rate; None: the host group's times `policy.lr_scale`."""
    region: str
    command_id: str


@dataclass(kw_only=True, slots=True)
class LiveScaffold:
    """A deployed scaffold: its plan, schedule and module, and a pending exit after a sunset."""

    plan: DeployPlan
    schedule: AlphaSchedule
    module: Scaffold
    deployed_boundary: int
    start_step: int
    host_requires_grad: dict[str, bool]
    exit: str = ""
    exit_command: str = ""

    @property
    def scaffold_id(self) -> str:
        return self.plan.scaffold_id

    def manifest(self) -> dict:
        """This scaffold in primitives (tensors live in the model's state_dict)."""
        p = self.plan
        return {
            "scaffold_id": p.scaffold_id,
            "module": p.module_name,
            "blueprint": p.spec.proto.name,
            "params": dict(p.params),
            "policy": p.policy.SerializeToString(),
            "as_scaffold": p.as_scaffold,
            "learning_rate": p.learning_rate,
            "region": p.region,
            "command_id": p.command_id,
            "schedule": self.schedule.to_dict(),
            "alpha": float(self.module.alpha),
            "deployed_boundary": self.deployed_boundary,
            "start_step": self.start_step,
            "host_requires_grad": dict(self.host_requires_grad),
            "exit": self.exit,
            "exit_command": self.exit_command,
        }


def plan_from_manifest(entry: dict) -> DeployPlan:
    """The deploy plan of a manifest entry (the blueprint must be registered)."""
    spec = get_blueprint(entry["blueprint"])
    if spec is None:
        raise KeyError(f"blueprint '{entry['blueprint']}' of scaffold '{entry['scaffold_id']}' is not registered")
    return DeployPlan(
        scaffold_id=entry["scaffold_id"],
        module_name=entry["module"],
        spec=spec,
        params=dict(entry["params"]),
        policy=command_pb2.ScaffoldPolicy.FromString(entry["policy"]),
        as_scaffold=entry["as_scaffold"],
        learning_rate=entry["learning_rate"],
        region=entry["region"],
        command_id=entry["command_id"],
    )


def _rate_scale(plan: DeployPlan, reference: dict) -> float:
    """The seed's rate over its reference group's: the policy's `lr_scale`, or for an explicit learning
    rate that rate over the group's base rate (its scheduler's `initial_lr`, else its rate), so that a
    scheduler shapes it as it shapes the host's. A group whose base rate is 0 trains nothing, nor does
    its seed."""
    if plan.learning_rate is None:
        return plan.policy.lr_scale
    base = float(reference.get("initial_lr", reference["lr"]))
    return plan.learning_rate / base if base > 0 else plan.policy.lr_scale


class ScaffoldRuntime:
    """Live scaffolds on one model and optimiser."""

    def __init__(
        self,
        root: nn.Module,
        optimizer: torch.optim.Optimizer,
        job: str,
        ring: StepLossRing,
    ) -> None:
        self.root = root
        self.optimizer = optimizer
        self.job = job
        self.ring = ring
        self.live: dict[str, LiveScaffold] = {}
        self.folds: list[FoldRecord] = []
        self.growth: list[dict] = []
        self.structure_version = 0
        self.rates = SeedRates(optimizer)

    # ---- placing and removing -------------------------------------------------------------

    def by_module(self, module_name: str) -> LiveScaffold | None:
        return next((s for s in self.live.values() if s.plan.module_name == module_name), None)

    def _build_seed(self, plan: DeployPlan) -> nn.Module:
        """The plan's seed for its host, initialised from the job and scaffold id (so a rebuild matches)."""
        host = self.root.get_submodule(plan.module_name)
        ctx = BuildContext(host=host, info=module_info(plan.module_name, host), params=plan.params)
        return plan.spec.build(ctx, init_seed=f"{self.job}/{plan.scaffold_id}")

    def deploy(self, plan: DeployPlan, boundary: int) -> LiveScaffold:
        """Build the seed, put the scaffold in the host's place, join the optimiser."""
        seed = self._build_seed(plan)
        schedule = AlphaSchedule(ScheduleConfig.from_policy(plan.policy, plan.as_scaffold))
        live = self._place(plan, seed, schedule, boundary, self.ring.steps)
        self._join_optimizer(live, state=None)
        self._log("scaffold_deployed", live, blueprint=plan.spec.proto.name, boundary=boundary)
        return live

    def _place(
        self, plan: DeployPlan, seed: nn.Module, schedule: AlphaSchedule, boundary: int, start_step: int
    ) -> LiveScaffold:
        host = self.root.get_submodule(plan.module_name)
        requires_grad = {name: p.requires_grad for name, p in host.named_parameters()}
        module = Scaffold(host, seed, plan.scaffold_id)
        replace_module(self.root, plan.module_name, module)
        live = LiveScaffold(
            plan=plan,
            schedule=schedule,
            module=module,
            deployed_boundary=boundary,
            start_step=start_step,
            host_requires_grad=requires_grad,
        )
        self.live[plan.scaffold_id] = live
        self.apply_schedule(live)
        self.structure_version += 1
        return live

    def _join_optimizer(self, live: LiveScaffold, state: dict[str, dict] | None) -> None:
        """Add the seed group with its reference group's hyperparameters, rates scaled, and tie its rate
        to that group's (and the schedulers' lists to the groups)."""
        host = live.module.host
        index = optim.reference_group(self.optimizer, host)
        reference = self.optimizer.param_groups[index]
        scale = _rate_scale(live.plan, reference)
        options = optim.seed_group_options(self.optimizer, reference, scale)
        optim.add_seed_group(self.optimizer, live.scaffold_id, live.module.seed, options, state)
        self.rates.joined(live.scaffold_id, host, index, scale)

    def apply_schedule(self, live: LiveScaffold) -> None:
        """Write the schedule's alpha into the buffer; freeze or unfreeze the host's own parameters."""
        frozen = live.schedule.host_frozen()
        with torch.no_grad():
            live.module.alpha.fill_(live.schedule.alpha())
        for name, param in live.module.host.named_parameters():
            wanted = live.host_requires_grad.get(name, True) and not frozen
            if param.requires_grad != wanted:
                param.requires_grad_(wanted)
                self.structure_version += 1

    def _remove(self, live: LiveScaffold) -> dict[str, dict]:
        """Take the scaffold out of the tree and the optimiser; returns the seed's optimiser state."""
        index = optim.group_index(self.optimizer, live.scaffold_id)
        state = optim.remove_seed_group(self.optimizer, live.scaffold_id, live.module.seed)
        if index is not None:
            self.rates.left(live.scaffold_id, index)
        for name, param in live.module.host.named_parameters():
            param.requires_grad_(live.host_requires_grad.get(name, True))
        replace_module(self.root, live.plan.module_name, live.module.host)
        del self.live[live.scaffold_id]
        self.structure_version += 1
        return state

    def prune(self, live: LiveScaffold, stage: int = telemetry_pb2.SCAFFOLD_STAGE_PRUNED) -> None:
        """Remove the scaffold; the host keeps only what it learnt (exact at alpha 0)."""
        self._remove(live)
        self._log("scaffold_pruned", live, stage=telemetry_pb2.ScaffoldStage.Name(stage))

    def fold(self, live: LiveScaffold, boundary: int) -> FoldRecord:
        """Fold the scaffold into its host (delta or router fold) and keep the reversible diff."""
        host, seed = live.module.host, live.module.seed
        snapshot = live.manifest()
        snapshot["seed_state"] = {k: v.detach().clone() for k, v in seed.state_dict().items()}
        kind = live.plan.spec.fold_kind
        if kind == job_pb2.FOLD_KIND_ROUTER:
            saved, swaps = fold_router(live.plan.module_name, host, seed)
        else:
            saved = fold_delta(live.plan.module_name, host, seed, live.module.alpha)
            swaps = []
        snapshot["optimizer_state"] = self._remove(live)
        if kind == job_pb2.FOLD_KIND_ROUTER:
            self._grow_optimizer(host, swaps, snapshot["optimizer_state"], seed)
            self.growth.append({"module": live.plan.module_name, "hidden": int(live.plan.params.get("hidden", 0))})
        record = FoldRecord(scaffold=snapshot, host_tensors=saved, boundary=boundary)
        self.folds = [*self.folds, record][-FOLD_DEPTH:]
        self._log("scaffold_folded", live, boundary=boundary)
        return record

    def _grow_optimizer(self, host: nn.Module, swaps: list[ParamSwap], seed_state: dict, seed: nn.Module) -> None:
        rows = {"weight": seed_state.get("router_row.weight"), "bias": seed_state.get("router_row.bias")}
        for swap, name in zip(swaps, ("weight", "bias"), strict=False):
            optim.replace_param(self.optimizer, swap.old, swap.new, rows[name], keep_rows=swap.old.shape[0])
        expert_names = [f"expert.{n}" for n, _ in seed.expert.named_parameters()]
        expert_state = {i: seed_state[n] for i, n in enumerate(expert_names) if n in seed_state}
        optim.move_params_to_group(self.optimizer, host.router.weight, list(seed.expert.parameters()), expert_state)

    # ---- rollback and restore --------------------------------------------------------------

    def rollback(self, record: FoldRecord, boundary: int) -> LiveScaffold:
        """Restore the host bit for bit and the scaffold as it was at the fold."""
        entry = record.scaffold
        host = self.root.get_submodule(entry["module"])
        plan = plan_from_manifest(entry)
        if plan.spec.fold_kind == job_pb2.FOLD_KIND_ROUTER:
            expert, swaps = unfold_router(host, record.host_tensors)
            optim.drop_params(self.optimizer, list(expert.parameters()))
            for swap in swaps:
                optim.replace_param(self.optimizer, swap.old, swap.new, None, keep_rows=swap.new.shape[0])
            last = max(i for i, g in enumerate(self.growth) if g["module"] == entry["module"])
            del self.growth[last]
        else:
            unfold_delta(host, record.host_tensors)
        self.folds.remove(record)
        live = self.restore(entry, seed_state=entry["seed_state"], optimizer_state=entry["optimizer_state"])
        self._log("scaffold_rolled_back", live, boundary=boundary)
        return live

    def restore(self, entry: dict, seed_state: dict | None, optimizer_state: dict | None) -> LiveScaffold:
        """Rebuild a scaffold from its manifest entry (tensors from `seed_state` when given)."""
        plan = plan_from_manifest(entry)
        seed = self._build_seed(plan)
        if seed_state is not None:
            seed.load_state_dict(seed_state)
        for name, param in self.root.get_submodule(plan.module_name).named_parameters():
            param.requires_grad_(entry["host_requires_grad"].get(name, True))
        schedule = AlphaSchedule.from_dict(entry["schedule"])
        live = self._place(plan, seed, schedule, entry["deployed_boundary"], entry["start_step"])
        live.host_requires_grad = dict(entry["host_requires_grad"])
        live.exit, live.exit_command = entry["exit"], entry["exit_command"]
        with torch.no_grad():
            live.module.alpha.fill_(entry["alpha"])
        self._join_optimizer(live, optimizer_state)
        return live

    def regrow(self, growth: list[dict]) -> None:
        """Replay router-fold growth on a fresh model (values come from the model's state_dict)."""
        for item in growth:
            host = self.root.get_submodule(item["module"])
            row = nn.Linear(host.router.in_features, 1, bias=host.router.bias is not None)
            expert = host.make_expert(item["hidden"] or None)
            seed = nn.Module()
            seed.router_row, seed.expert = row, expert
            seed.to(host.router.weight.device, host.router.weight.dtype)
            _, swaps = fold_router(item["module"], host, seed)
            self._grow_optimizer(host, swaps, {}, seed)
            self.growth.append(dict(item))
        self.structure_version += 1

    def _log(self, event: str, live: LiveScaffold, **fields) -> None:
        log.info(event, job=self.job, scaffold_id=live.scaffold_id, module=live.plan.module_name, **fields)
