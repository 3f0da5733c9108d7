"""Exit decisions (docs/design.md, section 5): FUSE / PRUNE / PERSIST from a boundary report's gates.

Run inside the report's transaction, so the commands carrying the decisions go back to the job in
the answer to that very report. Every decision is stored with its inputs, thresholds and reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from narset.contract.limits import MAX_BOUNDARY, derived_id
from narset.contract.rules import DEFAULT_EXTRA_CKPTS, persist_error, raised_flags
from narset.contract.stages import LIVE_STAGES
from narset.control.decision_log import record_decision
from narset.control.events import EventHub
from narset.control.job_policy import job_policy_of
from narset.control.judge import GateJudgement, judge_scaffold
from narset.control.ledger import GATES_ISSUER, IN_FLIGHT, CommandLedger
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["DecisionEngine"]

_O = telemetry_pb2
BREAKER_ISSUER = "kasmina:breaker"


def _can_extend(scaffold: job_pb2.Scaffold) -> bool:
    return (
        persist_error(scaffold.extensions, scaffold.ttl_ckpts, scaffold.policy.ttl_ckpts, DEFAULT_EXTRA_CKPTS) is None
    )


def _failure(verdict: _O.GateVerdict) -> str:
    """A failed verdict for a decision's reason: its value and limit, and how many readings it summarises."""
    if not verdict.HasField("value"):
        return f"{verdict.gate} unmeasured"
    # Only G5's step time summarises readings (judge.step_time_statistic): say over how many.
    summary = f"; low median of {verdict.samples} boundaries" if verdict.samples else ""
    return f"{verdict.gate}={verdict.value:.4g} (limit {verdict.threshold:g}{summary})"


def _outcome(scaffold: job_pb2.Scaffold, judgement: GateJudgement) -> tuple[int, str, bool] | None:
    """(outcome, reason, counts as a failure) for a scaffold at its exit, or None to let it live on."""
    if judgement.flags:
        return _O.DECISION_OUTCOME_PRUNE, f"safety breaker: {', '.join(judgement.flags)}", True
    # Gates are judged at the end of the scaffold's life: young scaffolds have noisy windows.
    if scaffold.stage != _O.SCAFFOLD_STAGE_EVALUATING:
        return None
    if judgement.hard_failures:
        failed = ", ".join(_failure(v) for v in judgement.verdicts if v.hard and not v.passed)
        return _O.DECISION_OUTCOME_PRUNE, f"hard gate(s) failed: {failed}", True
    exit_policy = scaffold.policy.exit_policy
    soft = judgement.soft_failures
    if not soft:
        if exit_policy == command_pb2.EXIT_POLICY_PERSIST_IF_WINS and _can_extend(scaffold):
            return _O.DECISION_OUTCOME_PERSIST, "all gates pass and the scaffold still wins (persist_if_wins)", False
        if exit_policy == command_pb2.EXIT_POLICY_PREFER_PRUNE:
            return _O.DECISION_OUTCOME_PRUNE, "all gates pass; exit policy prefers prune", False
        return _O.DECISION_OUTCOME_FUSE, "all gates pass", False
    if judgement.residual_gain_passes and _can_extend(scaffold):
        return (
            _O.DECISION_OUTCOME_PERSIST,
            f"soft gate(s) {', '.join(soft)} failed while G2 still shows benefit: TTL +{DEFAULT_EXTRA_CKPTS}",
            False,
        )
    why = "no extension left" if judgement.residual_gain_passes else "G2 shows no benefit"
    return _O.DECISION_OUTCOME_PRUNE, f"soft gate(s) {', '.join(soft)} failed and {why}", True


class DecisionEngine:
    """Decides exits for the scaffolds of one report and records decisions, commands and embargoes."""

    def __init__(self, store: Store, ledger: CommandLedger, events: EventHub) -> None:
        self._store = store
        self._ledger = ledger
        self._events = events

    def breaker_prunes(self, job: job_pb2.Job, request: worker_service_pb2.ReportBoundaryRequest) -> None:
        """Record the prunes the job's safety breakers took on their own, and embargo their regions.

        Call before the report's scaffold states are stored (it looks for live scaffolds reported pruned).
        """
        for report in request.scaffolds:
            flags = raised_flags(report.gates)
            if report.stage != _O.SCAFFOLD_STAGE_PRUNED or not flags:
                continue
            scaffold = self._store.get_scaffold(job.job_id, report.scaffold_id)
            if scaffold is None or scaffold.stage not in LIVE_STAGES:
                continue  # unknown, or already recorded (a retried report)
            reason = f"safety breaker in the job: {', '.join(flags)}"
            decision = _O.Decision(
                decision_id=derived_id(scaffold.scaffold_id, f".breaker.b{request.boundary}"),
                job_id=job.job_id,
                scaffold_id=scaffold.scaffold_id,
                boundary=request.boundary,
                outcome=_O.DECISION_OUTCOME_PRUNE,
                reason=reason,
                inputs=report.gates,
                thresholds=scaffold.policy.gates,
                issued_by=BREAKER_ISSUER,
            )
            record_decision(self._store, self._events, decision)
            self._embargo(job, scaffold.region, request.boundary)

    def decide(
        self,
        job: job_pb2.Job,
        request: worker_service_pb2.ReportBoundaryRequest,
        scaffolds: Mapping[str, job_pb2.Scaffold],
    ) -> list[_O.Decision]:
        """Exit decisions for the reported scaffolds; `scaffolds` are their states as just stored."""
        in_flight = {r.scaffold_id for r in self._store.list_commands(job.job_id, IN_FLIGHT)}
        probe_loss = request.probe_loss if request.HasField("probe_loss") else None
        decisions = []
        for report in request.scaffolds:
            scaffold = scaffolds[report.scaffold_id]
            if (
                scaffold.stage not in LIVE_STAGES
                or scaffold.stage == _O.SCAFFOLD_STAGE_PENDING
                or scaffold.scaffold_id in in_flight
            ):
                continue
            if not raised_flags(report.gates) and scaffold.stage != _O.SCAFFOLD_STAGE_EVALUATING:
                continue  # nothing to decide before the end of its life
            judgement = judge_scaffold(self._store, scaffold, probe_loss)
            outcome = _outcome(scaffold, judgement)
            if outcome is not None:
                decisions.append(self._record(job, scaffold, request.boundary, judgement, *outcome))
        return decisions

    def _record(
        self,
        job: job_pb2.Job,
        scaffold: job_pb2.Scaffold,
        boundary: int,
        judgement: GateJudgement,
        outcome: int,
        reason: str,
        failure: bool,
    ) -> _O.Decision:
        label = _O.DecisionOutcome.Name(outcome).removeprefix("DECISION_OUTCOME_").lower()
        command = command_pb2.AdaptationCommand(
            command_id=derived_id(scaffold.scaffold_id, f".{label}.b{boundary}"),
            job_id=job.job_id,
            issued_by=GATES_ISSUER,
            reason=reason,
        )
        if outcome == _O.DECISION_OUTCOME_FUSE:
            command.fold.scaffold.scaffold_id = scaffold.scaffold_id
        elif outcome == _O.DECISION_OUTCOME_PERSIST:
            command.persist.scaffold.scaffold_id = scaffold.scaffold_id
            command.persist.extra_ckpts = DEFAULT_EXTRA_CKPTS
        else:
            command.prune.scaffold.scaffold_id = scaffold.scaffold_id
            command.prune.immediate = bool(judgement.flags)
        self._ledger.submit(command)
        decision = _O.Decision(
            decision_id=command.command_id,
            job_id=job.job_id,
            scaffold_id=scaffold.scaffold_id,
            boundary=boundary,
            outcome=outcome,
            reason=reason,
            inputs=scaffold.gates,
            thresholds=scaffold.policy.gates,
            verdicts=judgement.verdicts,
            command_id=command.command_id,
            issued_by=GATES_ISSUER,
        )
        record_decision(self._store, self._events, decision)
        if failure:
            self._embargo(job, scaffold.region, boundary)
        return decision

    def _embargo(self, job: job_pb2.Job, region: str, boundary: int) -> None:
        """A failed scaffold embargoes its region; each repeat failure doubles the embargo.

        The end saturates past the last boundary a job may report (an embargo for good) instead of
        overflowing int64 after many failures or at huge boundaries.
        """
        policy = job_policy_of(self._store, job.job_id)
        previous = {e.region: e for e in self._store.list_embargoes(job.job_id)}.get(region)
        failures = (previous.failures if previous else 0) + 1
        length = policy.embargo_ckpts * 2 ** min(failures - 1, MAX_BOUNDARY.bit_length())
        until = min(boundary + length, MAX_BOUNDARY + 1)
        self._store.put_embargo(
            job.job_id, job_pb2.RegionEmbargo(region=region, until_boundary=until, failures=failures)
        )
