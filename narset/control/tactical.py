"""The optional automatic policy (docs/design.md, section 6): deploy a scaffold where it helps most.

Signal: over the last `plateau_window` boundaries the loss (the job's reported `val_loss` metric
when every report in the window has it, else the whole-model probe loss) improved by less than
`plateau_rel_delta` relative to its value at the window's start: a *plateau*, or, if it rose by
more than that, *instability*. Region: among regions that may take a deploy now (not protected, not
embargoed, under the per-region budget, with a free module the blueprint fits), the one whose
host parameters moved least since the previous boundary (`RegionSignal.update_ratio`, reported by
the worker), catalogue order breaking ties and standing in when no signal is reported. At most one
policy scaffold lives at a time, and after a policy deploy the policy waits a full window.
"""

from __future__ import annotations

import math

import structlog

from narset.contract.rules import blueprint_fit_errors, protected_region_error, region_for_module
from narset.contract.stages import LIVE_STAGES, OCCUPYING_STAGES
from narset.control.decision_log import record_decision
from narset.control.errors import Refusal
from narset.control.events import EventHub
from narset.control.ledger import CommandLedger
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["POLICY_ISSUER", "TacticalPolicy", "loss_signal"]

log = structlog.get_logger("narset.control.tactical")

POLICY_ISSUER = "policy:tactical"


def loss_signal(losses: list[float], rel_delta: float) -> str | None:
    """'plateau', 'instability' or None for a window of losses, oldest first."""
    first, last = losses[0], losses[-1]
    if not (math.isfinite(first) and math.isfinite(last)) or first == 0:
        return None
    improvement = (first - last) / abs(first)
    if improvement < -rel_delta:
        return "instability"
    if improvement < rel_delta:
        return "plateau"
    return None


class TacticalPolicy:
    def __init__(self, store: Store, ledger: CommandLedger, events: EventHub) -> None:
        self._store = store
        self._ledger = ledger
        self._events = events

    def _window(self, job_id: str, boundary: int, window: int) -> tuple[list[float], str]:
        reports = [
            worker_service_pb2.ReportBoundaryRequest.FromString(body)
            for _, body in self._store.report_bodies(job_id, boundary - window, boundary)
        ]
        if len(reports) == window + 1 and all("val_loss" in r.metrics for r in reports):
            return [r.metrics["val_loss"] for r in reports], "val_loss"
        return [r.probe_loss for r in reports if r.HasField("probe_loss")], "probe loss"

    def consider(
        self, job: job_pb2.Job, request: worker_service_pb2.ReportBoundaryRequest, policy: job_pb2.JobPolicy
    ) -> telemetry_pb2.Decision | None:
        auto = policy.auto
        if not auto.enabled:
            return None
        losses, source = self._window(job.job_id, request.boundary, auto.plateau_window)
        if len(losses) < auto.plateau_window + 1:
            return None
        signal = loss_signal(losses, auto.plateau_rel_delta)
        if signal is None or self._cooling_down(job.job_id, request.boundary, auto.plateau_window):
            return None
        choice = self._choose(job, policy, request.region_signals)
        if choice is None:
            log.info("tactical.no_room", job_id=job.job_id, boundary=request.boundary, signal=signal)
            return None
        region, module, ratio = choice
        change = (losses[0] - losses[-1]) / abs(losses[0])
        reason = (
            f"{signal}: {source} changed {change:+.2%} over {auto.plateau_window} boundaries "
            f"(threshold {auto.plateau_rel_delta:.2%}); region '{region}' "
            + (f"has the lowest update ratio {ratio:.3g}" if ratio is not None else "is the first with room")
        )
        command = command_pb2.AdaptationCommand(
            command_id=f"auto.{job.job_id}.b{request.boundary}",
            job_id=job.job_id,
            issued_by=POLICY_ISSUER,
            reason=reason,
        )
        deploy = command.deploy
        deploy.module, deploy.blueprint = module, auto.blueprint
        # A module outside every declared region is its own (implicit) region: the ledger resolves it.
        deploy.region = region if any(r.name == region for r in job.regions) else ""
        deploy.policy.CopyFrom(auto.scaffold_policy)
        deploy.blueprint_params.update(auto.blueprint_params)
        try:
            record, _ = self._ledger.submit(command)
        except Refusal as refusal:
            log.info(
                "tactical.refused",
                job_id=job.job_id,
                boundary=request.boundary,
                reason=refusal.reason,
                message=str(refusal),
            )
            return None
        decision = telemetry_pb2.Decision(
            decision_id=command.command_id,
            job_id=job.job_id,
            scaffold_id=record.scaffold_id,
            boundary=request.boundary,
            outcome=telemetry_pb2.DECISION_OUTCOME_DEPLOY,
            reason=reason,
            command_id=command.command_id,
            issued_by=POLICY_ISSUER,
        )
        return record_decision(self._store, self._events, decision)

    def _cooling_down(self, job_id: str, boundary: int, window: int) -> bool:
        for decision in self._store.list_decisions(job_id):
            if decision.issued_by != POLICY_ISSUER:
                continue
            if boundary - decision.boundary < window:
                return True
            scaffold = self._store.get_scaffold(job_id, decision.scaffold_id)
            if scaffold is not None and scaffold.stage in LIVE_STAGES:
                return True
        return False

    def _choose(self, job: job_pb2.Job, policy: job_pb2.JobPolicy, signals) -> tuple[str, str, float | None] | None:
        blueprint = self._store.get_blueprint(policy.auto.blueprint)
        if blueprint is None:
            return None
        params = dict(policy.auto.blueprint_params)
        embargoed = {e.region for e in self._store.list_embargoes(job.job_id) if job.last_boundary < e.until_boundary}
        occupying = self._store.list_scaffolds(job.job_id, OCCUPYING_STAGES)
        occupied = {s.module for s in occupying}
        live = [s for s in occupying if s.stage in LIVE_STAGES]
        candidates: dict[str, str] = {}
        for module in self._store.list_modules(job.job_id):
            region = region_for_module(job.regions, module.name) or module.name
            if (
                region in candidates
                or protected_region_error(region, job.regions, policy.protected_regions)
                or region in embargoed
                or module.name in occupied
                or sum(s.region == region for s in live) >= policy.max_scaffolds_per_region
                or blueprint_fit_errors(blueprint, module, params)
            ):
                continue
            candidates[region] = module.name
        if not candidates:
            return None
        ratios = {s.region: s.update_ratio for s in signals if s.HasField("update_ratio")}
        order = list(candidates)
        region = min(order, key=lambda r: (ratios.get(r, math.inf), order.index(r)))
        return region, candidates[region], ratios.get(region)
