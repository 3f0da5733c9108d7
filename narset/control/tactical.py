"""The optional automatic policy (docs/design.md, section 6): deploy scaffolds where they can help.

Both triggers act only while `auto.enabled`, and every deploy goes through the ledger's checks
(protection, embargo, budgets, blueprint fit) and is recorded as a DEPLOY decision with its reason.

**Warm start** (`auto.warm_start.sites`): once per job, at the first boundary whose report carries a
step time (so the job has trained an interval and the scaffolds' G5 step-time ratio has its
pre-deploy base), one deploy per site on the first free module of its region that the blueprint
fits. With `exit_boundary` set, each scaffold's TTL is cut so that it reaches EVALUATING at that
boundary and holds its warm level until then; the gates decide its exit there, as for any scaffold.

**Plateau** (`auto.plateau_window` W > 0): over the last W boundaries, the relative change of the
train loss (the job's `train_loss` metric) and of the validation loss (its `val_loss` metric, else
the probe loss), each measured along its least-squares line (`relative_change`), gives the regime
(`loss_regime`, threshold d = `plateau_rel_delta`):

| validation | train | regime | action |
|---|---|---|---|
| falls by more than d | any | improving | none |
| within d | within d | plateau | deploy |
| within d or rises | falls by more than d | overfitting | none: added capacity fits the training set further |
| rises by more than d | within d, rises, or unreported | instability | none |
| within d | rises by more than d | instability | none |
| within d | unreported | unknown | none: a plateau cannot be told from overfitting |

Instability deploys nothing: a scaffold cannot repair an optimisation that is diverging, and its
gates (G2's trend, G4's stability) would judge it on a loss the scaffold did not cause. The job's
safety breakers cut live scaffolds on spikes and non-finite losses; the regime is only logged.
A plateau deploys `auto.blueprint` in the region whose host parameters moved least since the
previous boundary (`RegionSignal.update_ratio`, reported by the worker), catalogue order breaking
ties and standing in when no signal is reported, among the regions with room. At most one policy
scaffold lives at a time (warm-start ones included), and after a policy deploy the plateau trigger
waits a full window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import structlog

from narset.contract.rules import (
    blueprint_fit_errors,
    protected_region_error,
    region_for_module,
    tied_parameter_error,
)
from narset.contract.scaffold_policy import effective_policy
from narset.contract.stages import LIVE_STAGES, OCCUPYING_STAGES
from narset.control.blueprints import BlueprintCatalogue
from narset.control.decision_log import record_decision
from narset.control.errors import Refusal
from narset.control.events import EventHub
from narset.control.judge import trend_slope
from narset.control.ledger import CommandLedger
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["POLICY_ISSUER", "TacticalPolicy", "loss_regime", "relative_change"]

log = structlog.get_logger("narset.control.tactical")

POLICY_ISSUER = "policy:tactical"

Regime = Literal["improving", "plateau", "overfitting", "instability", "unknown"]


def relative_change(losses: Sequence[float]) -> float | None:
    """Change over `losses` (oldest first) along their least-squares line, relative to their mean.

    The fitted line, not the two end points, so that one noisy boundary at either end of the window
    cannot decide the regime. None when a value is not finite or the mean is 0.
    """
    if len(losses) < 2 or not all(math.isfinite(v) for v in losses):
        return None
    mean = sum(losses) / len(losses)
    if mean == 0:
        return None
    return trend_slope(losses) * (len(losses) - 1) / abs(mean)


def loss_regime(train: float | None, validation: float | None, rel_delta: float) -> Regime | None:
    """The regime of a window from the relative changes of its train and validation losses (None: unmeasured)."""
    if validation is None:
        return None
    if validation < -rel_delta:
        return "improving"
    if train is not None and train < -rel_delta:
        return "overfitting"  # validation flat or rising while the training set is fitted further
    if validation > rel_delta or (train is not None and train > rel_delta):
        return "instability"
    return "unknown" if train is None else "plateau"


def _site_deploy(site: job_pb2.WarmStartSite, auto: job_pb2.AutoPolicy) -> command_pb2.DeployAction:
    """The deploy a warm-start site asks for: its own blueprint and settings, or the policy's."""
    source = site if site.blueprint else auto
    deploy = command_pb2.DeployAction(blueprint=source.blueprint)
    deploy.blueprint_params.update(source.blueprint_params)
    deploy.policy.CopyFrom(source.scaffold_policy)
    return deploy


def _fit_to_exit(deploy: command_pb2.DeployAction, blueprint: job_pb2.Blueprint, ttl: int) -> None:
    """Cut the deploy's TTL to `ttl` and let its hold fill what the other phases leave of it.

    A warm-start scaffold holds its warm level until the exit boundary. Where the other phases
    alone outlast the TTL the schedule is left as it is, and the ledger refuses the deploy.
    """
    schedule = effective_policy(blueprint, deploy.policy).schedule
    others = schedule.isolated_ckpts + schedule.warmup_ckpts + schedule.decay_ckpts
    deploy.policy.ttl_ckpts = ttl
    if ttl >= others:
        deploy.policy.schedule.hold_ckpts = ttl - others


class TacticalPolicy:
    def __init__(self, store: Store, ledger: CommandLedger, events: EventHub) -> None:
        self._store = store
        self._ledger = ledger
        self._events = events
        self._blueprints = BlueprintCatalogue(store)

    def consider(
        self, job: job_pb2.Job, request: worker_service_pb2.ReportBoundaryRequest, policy: job_pb2.JobPolicy
    ) -> list[telemetry_pb2.Decision]:
        """The policy's deploys for this report, each recorded as a decision (none while the policy is off)."""
        if not policy.auto.enabled:
            return []
        decisions = self._warm_start(job, request, policy)
        if not decisions and policy.auto.plateau_window > 0:
            decision = self._plateau(job, request, policy)
            decisions = [decision] if decision is not None else []
        return decisions

    # warm start ----------------------------------------------------------------------------------

    def _warm_start(
        self, job: job_pb2.Job, request: worker_service_pb2.ReportBoundaryRequest, policy: job_pb2.JobPolicy
    ) -> list[telemetry_pb2.Decision]:
        warm = policy.auto.warm_start
        if not warm.sites or not request.HasField("step_time_ms") or self._warm_started(job.job_id):
            return []
        # Narset sees a scaffold in EVALUATING one boundary after it reached its TTL, and decides then.
        ttl = warm.exit_boundary - request.boundary - 1
        if warm.exit_boundary and ttl < 1:
            log.info("tactical.warm_start_too_late", job_id=job.job_id, boundary=request.boundary)
            return []
        decisions = []
        for index, site in enumerate(warm.sites):
            deploy = _site_deploy(site, policy.auto)
            blueprint = self._blueprints.get(job.job_id, deploy.blueprint)
            module = self._candidates(job, policy, deploy).get(site.region) if blueprint is not None else None
            if module is None:
                log.info("tactical.warm_start_no_room", job_id=job.job_id, region=site.region)
                continue
            deploy.module = module
            if warm.exit_boundary:
                _fit_to_exit(deploy, blueprint, ttl)
            reason = f"warm start: {deploy.blueprint} in region '{site.region}'" + (
                f", judged at boundary {warm.exit_boundary}" if warm.exit_boundary else ""
            )
            decision = self._deploy(job, request.boundary, site.region, deploy, reason, f"w{index}.")
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _warm_started(self, job_id: str) -> bool:
        # Warm-start ids are `auto.<job>.w<site>.b<N>`; the plateau's `auto.<job>.b<N>` never match.
        prefix = f"auto.{job_id}.w"
        return any(d.decision_id.startswith(prefix) for d in self._store.list_decisions(job_id))

    # plateau -------------------------------------------------------------------------------------

    def _plateau(
        self, job: job_pb2.Job, request: worker_service_pb2.ReportBoundaryRequest, policy: job_pb2.JobPolicy
    ) -> telemetry_pb2.Decision | None:
        auto = policy.auto
        window = self._window(job.job_id, request.boundary, auto.plateau_window)
        if window is None:
            return None
        train, validation, source = window
        train_change = relative_change(train) if train is not None else None
        validation_change = relative_change(validation)
        regime = loss_regime(train_change, validation_change, auto.plateau_rel_delta)
        if regime != "plateau":
            if regime in ("overfitting", "instability", "unknown"):
                log.info(
                    f"tactical.{regime}",
                    job_id=job.job_id,
                    boundary=request.boundary,
                    train_change=train_change,
                    validation_change=validation_change,
                )
            return None
        if self._cooling_down(job.job_id, request.boundary, auto.plateau_window):
            return None
        deploy = command_pb2.DeployAction(blueprint=auto.blueprint)
        deploy.blueprint_params.update(auto.blueprint_params)
        deploy.policy.CopyFrom(auto.scaffold_policy)
        choice = self._choose(job, policy, deploy, request.region_signals)
        if choice is None:
            log.info("tactical.no_room", job_id=job.job_id, boundary=request.boundary)
            return None
        region, deploy.module, ratio = choice
        reason = (
            f"plateau: train_loss changed {train_change:+.2%} and {source} {validation_change:+.2%} over "
            f"{auto.plateau_window} boundaries (flat within {auto.plateau_rel_delta:.2%}); region '{region}' "
            + (f"has the lowest update ratio {ratio:.3g}" if ratio is not None else "is the first with room")
        )
        return self._deploy(job, request.boundary, region, deploy, reason, "")

    def _window(self, job_id: str, boundary: int, window: int) -> tuple[list[float] | None, list[float], str] | None:
        """(train losses or None, validation losses, the validation's source) over the window, or None."""
        reports = [
            worker_service_pb2.ReportBoundaryRequest.FromString(body)
            for _, body in self._store.report_bodies(job_id, boundary - window, boundary)
        ]
        if len(reports) < window + 1:
            return None

        def metric(name: str) -> list[float] | None:
            return [r.metrics[name] for r in reports] if all(name in r.metrics for r in reports) else None

        train, validation = metric("train_loss"), metric("val_loss")
        if validation is not None:
            return train, validation, "val_loss"
        if all(r.HasField("probe_loss") for r in reports):
            return train, [r.probe_loss for r in reports], "probe loss"
        return None

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

    def _choose(
        self, job: job_pb2.Job, policy: job_pb2.JobPolicy, deploy: command_pb2.DeployAction, signals
    ) -> tuple[str, str, float | None] | None:
        """(region, module, its update ratio) with the least movement among the regions with room."""
        candidates = self._candidates(job, policy, deploy)
        if not candidates:
            return None
        ratios = {s.region: s.update_ratio for s in signals if s.HasField("update_ratio")}
        order = list(candidates)
        region = min(order, key=lambda r: (ratios.get(r, math.inf), order.index(r)))
        return region, candidates[region], ratios.get(region)

    # both ----------------------------------------------------------------------------------------

    def _candidates(
        self, job: job_pb2.Job, policy: job_pb2.JobPolicy, deploy: command_pb2.DeployAction
    ) -> dict[str, str]:
        """For each region that may take `deploy` now, its first free module the blueprint fits."""
        blueprint = self._blueprints.get(job.job_id, deploy.blueprint)
        if blueprint is None:
            return {}
        params = dict(deploy.blueprint_params)
        embargoed = {e.region for e in self._store.list_embargoes(job.job_id) if job.last_boundary < e.until_boundary}
        occupying = self._store.list_scaffolds(job.job_id, OCCUPYING_STAGES)
        occupied = {s.module for s in occupying}
        live = [s for s in occupying if s.stage in LIVE_STAGES]
        candidates: dict[str, str] = {}
        modules = self._store.list_modules(job.job_id)
        tied = [m for m in modules if any(p.tied_to for p in m.parameters)]
        for module in modules:
            region = region_for_module(job.regions, module.name) or module.name
            if (
                region in candidates
                or protected_region_error(region, job.regions, policy.protected_regions)
                or region in embargoed
                or module.name in occupied
                or sum(s.region == region for s in live) >= policy.max_scaffolds_per_region
                or tied_parameter_error(module.name, tied)
                or blueprint_fit_errors(blueprint, module, params)
            ):
                continue
            candidates[region] = module.name
        return candidates

    def _deploy(
        self,
        job: job_pb2.Job,
        boundary: int,
        region: str,
        deploy: command_pb2.DeployAction,
        reason: str,
        id_infix: str,
    ) -> telemetry_pb2.Decision | None:
        """Submit `deploy` as the policy and record the decision; None when the ledger refuses it."""
        command = command_pb2.AdaptationCommand(
            command_id=f"auto.{job.job_id}.{id_infix}b{boundary}",
            job_id=job.job_id,
            issued_by=POLICY_ISSUER,
            reason=reason,
        )
        command.deploy.CopyFrom(deploy)
        # A module outside every declared region is its own (implicit) region: the ledger resolves it.
        command.deploy.region = region if any(r.name == region for r in job.regions) else ""
        try:
            record, _ = self._ledger.submit(command)
        except Refusal as refusal:
            log.info(
                "tactical.refused", job_id=job.job_id, boundary=boundary, reason=refusal.reason, message=str(refusal)
            )
            return None
        decision = telemetry_pb2.Decision(
            decision_id=command.command_id,
            job_id=job.job_id,
            scaffold_id=record.scaffold_id,
            boundary=boundary,
            outcome=telemetry_pb2.DECISION_OUTCOME_DEPLOY,
            reason=reason,
            command_id=command.command_id,
            issued_by=POLICY_ISSUER,
        )
        return record_decision(self._store, self._events, decision)
