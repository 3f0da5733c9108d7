"""What a boundary reports (the contract's `ReportBoundaryRequest`) and returns (`BoundarySummary`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kasmina_worker.runtime.lifecycle import LiveScaffold
from narset.v1 import telemetry_pb2, worker_service_pb2

__all__ = ["BoundarySummary", "ScaffoldSummary", "scaffold_report"]


@dataclass(frozen=True, slots=True)
class ScaffoldSummary:
    """One scaffold after the boundary."""

    scaffold_id: str
    module: str
    blueprint: str
    stage: str
    """`telemetry_pb2.ScaffoldStage` name, e.g. "SCAFFOLD_STAGE_HOLD"."""
    alpha: float
    age_ckpts: int
    ttl_ckpts: int
    paused: bool


@dataclass(frozen=True, slots=True)
class BoundarySummary:
    """The outcome of one `checkpoint()`: what was reported, applied, and where scaffolds stand."""

    boundary: int
    step: int
    scaffolds: tuple[ScaffoldSummary, ...]
    """Every live scaffold after the boundary, plus those that left during it (stage FUSED/PRUNED)."""
    results: tuple[telemetry_pb2.CommandResult, ...]
    events: tuple[telemetry_pb2.SafetyEvent, ...]
    probe_loss: float | None
    gates: Mapping[str, telemetry_pb2.GateTelemetry]
    """Gate telemetry measured for the report, by scaffold id."""
    report: worker_service_pb2.ReportBoundaryRequest
    """The report built at the start of the boundary (what a control plane receives)."""

    def scaffold(self, scaffold_id: str) -> ScaffoldSummary | None:
        return next((s for s in self.scaffolds if s.scaffold_id == scaffold_id), None)


def scaffold_report(
    live: LiveScaffold, stage: int | None = None, gates: telemetry_pb2.GateTelemetry | None = None
) -> telemetry_pb2.ScaffoldReport:
    """The contract report of one scaffold (`stage` overrides the schedule's, for exits)."""
    schedule = live.schedule
    report = telemetry_pb2.ScaffoldReport(
        scaffold_id=live.scaffold_id,
        module=live.plan.module_name,
        blueprint=live.plan.spec.proto.name,
        stage=schedule.stage() if stage is None else stage,
        alpha=float(live.module.alpha),
        age_ckpts=schedule.state.age,
        ttl_ckpts=schedule.state.ttl,
        extensions=schedule.state.extensions,
        paused=schedule.state.paused,
        region=live.plan.region,
        seed_parameters=sum(p.numel() for p in live.module.seed.parameters()),
        policy=live.plan.policy,
    )
    if gates is not None:
        report.gates.CopyFrom(gates)
    return report


def summary_of(report: telemetry_pb2.ScaffoldReport) -> ScaffoldSummary:
    return ScaffoldSummary(
        scaffold_id=report.scaffold_id,
        module=report.module,
        blueprint=report.blueprint,
        stage=telemetry_pb2.ScaffoldStage.Name(report.stage),
        alpha=report.alpha,
        age_ckpts=report.age_ckpts,
        ttl_ckpts=report.ttl_ckpts,
        paused=report.paused,
    )
