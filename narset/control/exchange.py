"""The worker side of Narset: attach (with reconciliation), the boundary exchange, detach.

Delivery is at-least-once and the worker applies by command id at most once, so the effect of
every command is exactly once: a DELIVERED command is sent again at every exchange until its
result arrives, and at re-attach the ledger is reconciled against the job's restored state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import structlog

from narset.contract import reasons
from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.contract.limits import BASE_ID_MAX, MAX_BOUNDARY, MAX_MESSAGE_BYTES
from narset.contract.rules import blueprint_spec_errors, protocol_error
from narset.contract.scaffold_policy import effective_policy
from narset.contract.stages import LIVE_STAGES
from narset.control.blueprints import BlueprintCatalogue
from narset.control.credentials import digest, new_credential, same_digest
from narset.control.decisions import DecisionEngine
from narset.control.errors import Refusal
from narset.control.events import EventHub
from narset.control.job_policy import default_job_policy, job_policy_of
from narset.control.ledger import IN_FLIGHT, check_identifier
from narset.control.tactical import TacticalPolicy
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["Exchange"]

log = structlog.get_logger("narset.control.exchange")

_S = command_pb2


def _require_finite(field: str, value: float) -> None:
    if not math.isfinite(value):
        raise Refusal(reasons.INVALID_FIELD, field, f"must be finite, got {value}")


def _check_boundary(field: str, value: int, least: int) -> None:
    if not least <= value <= MAX_BOUNDARY:
        raise Refusal(reasons.INVALID_FIELD, field, f"must be in [{least}, {MAX_BOUNDARY}], got {value}")


def _check_scaffold_reports(field: str, reports) -> None:
    """Each scaffold at most once (its state is one row), with its id and a stage."""
    seen: set[str] = set()
    for i, scaffold in enumerate(reports):
        if not scaffold.scaffold_id:
            raise Refusal(reasons.INVALID_FIELD, f"{field}[{i}].scaffold_id", "is required")
        if scaffold.scaffold_id in seen:
            raise Refusal(
                reasons.INVALID_FIELD,
                f"{field}[{i}].scaffold_id",
                f"scaffold '{scaffold.scaffold_id}' is reported twice; report each scaffold once",
            )
        if scaffold.stage == telemetry_pb2.SCAFFOLD_STAGE_UNSPECIFIED:
            raise Refusal(reasons.INVALID_FIELD, f"{field}[{i}].stage", "is required")
        seen.add(scaffold.scaffold_id)


def _check_report(request: worker_service_pb2.ReportBoundaryRequest) -> None:
    _check_boundary("report.boundary", request.boundary, 1)
    if request.step < 0:
        raise Refusal(reasons.INVALID_FIELD, "report.step", f"must be >= 0, got {request.step}")
    if request.HasField("probe_loss"):
        _require_finite("report.probe_loss", request.probe_loss)
    if request.HasField("step_time_ms"):
        _require_finite("report.step_time_ms", request.step_time_ms)
    for name, value in request.metrics.items():
        _require_finite(f"report.metrics[{name}]", value)
    _check_scaffold_reports("report.scaffolds", request.scaffolds)
    for i, scaffold in enumerate(request.scaffolds):
        _require_finite(f"report.scaffolds[{i}].alpha", scaffold.alpha)
        for descriptor, value in scaffold.gates.ListFields():
            if isinstance(value, float):
                _require_finite(f"report.scaffolds[{i}].gates.{descriptor.name}", value)
    for i, result in enumerate(request.results):
        if not result.command_id:
            raise Refusal(reasons.INVALID_FIELD, f"report.results[{i}].command_id", "is required")
        if result.outcome == telemetry_pb2.COMMAND_OUTCOME_UNSPECIFIED:
            raise Refusal(reasons.INVALID_FIELD, f"report.results[{i}].outcome", "must be APPLIED or REJECTED")


def _stored_report(request: worker_service_pb2.ReportBoundaryRequest) -> bytes:
    """The report as kept for the gates' history: without its session credential, a secret."""
    stored = worker_service_pb2.ReportBoundaryRequest()
    stored.CopyFrom(request)
    stored.ClearField("session_id")
    return stored.SerializeToString()


def _check_unique_names(field: str, kind: str, items) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not item.name:
            raise Refusal(reasons.INVALID_FIELD, f"{field}[{i}].name", "is required")
        if item.name in seen:
            raise Refusal(reasons.INVALID_FIELD, f"{field}[{i}].name", f"duplicate {kind} '{item.name}'")
        seen.add(item.name)


def _check_attach(request: worker_service_pb2.AttachRequest) -> None:
    check_identifier("attach.job_id", request.job_id, BASE_ID_MAX)
    _check_boundary("attach.restored.boundary", request.restored.boundary, 0)
    _check_scaffold_reports("attach.restored.scaffolds", request.restored.scaffolds)
    if request.world_size < 1:
        raise Refusal(reasons.INVALID_FIELD, "attach.world_size", f"must be >= 1, got {request.world_size}")
    unsupported = protocol_error(request.capabilities.protocol_version)
    if unsupported is not None:
        raise Refusal(reasons.PROTOCOL_UNSUPPORTED, f"attach.{unsupported.field}", unsupported.reason)
    _check_unique_names("attach.modules", "module", request.modules)
    builtin = {b.name for b in BUILTIN_BLUEPRINTS}
    for i, blueprint in enumerate(request.blueprints):
        if not blueprint.name or blueprint.name in builtin:
            raise Refusal(
                reasons.INVALID_FIELD,
                f"attach.blueprints[{i}].name",
                f"must name a blueprint that is not built in, got {blueprint.name!r}",
            )
        if not blueprint.host_types:
            raise Refusal(
                reasons.INVALID_FIELD,
                f"attach.blueprints[{i}].host_types",
                f"blueprint '{blueprint.name}' needs a host type",
            )
        errors = blueprint_spec_errors(blueprint, f"attach.blueprints[{i}]")
        if errors:
            raise Refusal.of(reasons.INVALID_FIELD, errors)
    _check_unique_names("attach.regions", "region", request.regions)
    for i, region in enumerate(request.regions):
        if not region.patterns:
            raise Refusal(
                reasons.INVALID_FIELD, f"attach.regions[{i}].patterns", f"region '{region.name}' needs a pattern"
            )


class Exchange:
    """Attach, report and detach; each a single store transaction holding the job's lock, from its first
    read of the job to its commit, so that replicas on one database serve a job one call at a time."""

    def __init__(
        self,
        store: Store,
        events: EventHub,
        decisions: DecisionEngine,
        tactical: TacticalPolicy,
        message_limit: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._store = store
        self._events = events
        self._decisions = decisions
        self._tactical = tactical
        self._blueprints = BlueprintCatalogue(store)
        # Encoded bytes of commands one report's answer carries (half the message limit: room for the
        # decisions); the rest wait, in order, for the next boundaries.
        self._command_bytes = message_limit // 2

    def _session_job(self, job_id: str, session_id: str, field: str) -> job_pb2.Job:
        """The job whose current session `session_id` (the worker credential) is; refused otherwise."""
        job = self._store.get_job(job_id)
        if job is None:
            raise Refusal(reasons.JOB_NOT_FOUND, f"{field}.job_id", f"no job '{job_id}'; attach first")
        if not same_digest(session_id, self._store.session_digest(job_id)):
            owner = self._store.job_of_session(digest(session_id))
            if owner is not None:
                raise Refusal(
                    reasons.SESSION_OF_ANOTHER_JOB,
                    f"{field}.session_id",
                    f"the session credential is not one of job '{job_id}'",
                )
            # The credential itself is never echoed: it is a secret, and logs keep refusals.
            raise Refusal(
                reasons.SESSION_SUPERSEDED,
                f"{field}.session_id",
                f"the session of job '{job_id}' was superseded (or never issued); attach again",
            )
        return job

    # attach -------------------------------------------------------------------------------------

    def attach(
        self, request: worker_service_pb2.AttachRequest, may_take_over: Callable[[job_pb2.Job], bool]
    ) -> worker_service_pb2.AttachResponse:
        """Attach the job with a fresh session; returns its worker credential, which only this answer holds.

        A job attached to another session is taken over only with that session's credential or when
        `may_take_over(job)` says the caller may.
        """
        _check_attach(request)
        with self._store.transaction(job=request.job_id):
            return self._attach(request, may_take_over)

    def _attach(
        self, request: worker_service_pb2.AttachRequest, may_take_over: Callable[[job_pb2.Job], bool]
    ) -> worker_service_pb2.AttachResponse:
        now = time.time_ns()
        job = self._store.get_job(request.job_id) or job_pb2.Job(job_id=request.job_id)
        self._check_take_over(job, request.session_id, may_take_over)
        credential = new_credential()
        job.state = job_pb2.JOB_STATE_ATTACHED
        job.world_size = request.world_size
        del job.ranks[:]
        job.ranks.extend(request.ranks)
        del job.regions[:]
        job.regions.extend(request.regions)
        job.capabilities.CopyFrom(request.capabilities)
        job.module_count = len(request.modules)
        job.attached_at.FromNanoseconds(now)
        job.last_seen_at.FromNanoseconds(now)
        if request.HasField("restored"):
            job.last_boundary = request.restored.boundary
        self._store.put_job(job)
        self._store.set_session(job.job_id, digest(credential))
        self._store.replace_modules(job.job_id, request.modules)
        self._blueprints.register(job.job_id, request.blueprints)
        policy = self._store.get_policy(job.job_id)
        if policy is None:
            policy = default_job_policy()
            self._store.put_policy(job.job_id, policy)
        redeliver = self._reconcile(job, request.restored)
        self._refresh_live_count(job)
        self._store.put_job(job)
        self._events.emit(
            job.job_id,
            job_pb2.EVENT_KIND_JOB_ATTACHED,
            f"job attached with {job.world_size} rank(s) and {job.module_count} modules",
            resumed_from=request.restored.boundary,
            redelivered=len(redeliver),
        )
        return worker_service_pb2.AttachResponse(
            session_id=credential,
            next_boundary=request.restored.boundary + 1,
            policy=policy,
            redeliver_command_ids=redeliver,
        )

    def _check_take_over(self, job: job_pb2.Job, presented: str, may_take_over: Callable[[job_pb2.Job], bool]) -> None:
        if job.state != job_pb2.JOB_STATE_ATTACHED or may_take_over(job):
            return
        if presented and same_digest(presented, self._store.session_digest(job.job_id)):
            return  # the session itself attaching again (Narset restarted, or the link lost an answer)
        raise Refusal(
            reasons.JOB_ATTACHED,
            "attach.session_id",
            f"job '{job.job_id}' is attached to another session; taking it over needs that session's "
            f"credential, or a token allowed to take the job over",
        )

    def _reconcile(self, job: job_pb2.Job, restored: worker_service_pb2.RestoredState) -> list[str]:
        """Align the ledger with what the job's checkpoint has applied; returns the ids to redeliver."""
        applied = set(restored.applied_command_ids)
        redeliver: list[str] = []
        for record in self._store.list_commands(job.job_id, (_S.COMMAND_STATE_APPLIED, _S.COMMAND_STATE_DELIVERED)):
            command_id = record.command.command_id
            if record.state == _S.COMMAND_STATE_APPLIED and command_id not in applied:
                # The job resumed from a checkpoint older than this command's effect.
                record.state = _S.COMMAND_STATE_PENDING
                record.delivered_boundary = 0
                record.applied_boundary = 0
                redeliver.append(command_id)
                if record.command.WhichOneof("action") == "deploy":
                    self._reset_scaffold(job.job_id, record.scaffold_id)
            elif record.state == _S.COMMAND_STATE_DELIVERED and command_id in applied:
                # Applied and saved, but the result never reached us.
                record.state = _S.COMMAND_STATE_APPLIED
                record.applied_boundary = record.delivered_boundary
            else:
                continue
            record.updated_at.FromNanoseconds(time.time_ns())
            self._store.put_command(record)
        for report in restored.scaffolds:
            self._update_scaffold(job.job_id, restored.boundary, report)
        return redeliver

    def _reset_scaffold(self, job_id: str, scaffold_id: str) -> None:
        scaffold = self._store.get_scaffold(job_id, scaffold_id)
        if scaffold is not None:
            scaffold.stage = telemetry_pb2.SCAFFOLD_STAGE_PENDING
            scaffold.alpha = 0.0
            scaffold.age_ckpts = 0
            scaffold.extensions = 0
            scaffold.ttl_ckpts = scaffold.policy.ttl_ckpts
            self._store.put_scaffold(scaffold)

    def _refresh_live_count(self, job: job_pb2.Job) -> None:
        job.live_scaffolds = self._store.count_live_scaffolds(job.job_id)

    # report -------------------------------------------------------------------------------------

    def report(self, request: worker_service_pb2.ReportBoundaryRequest) -> worker_service_pb2.ReportBoundaryResponse:
        _check_report(request)
        response = worker_service_pb2.ReportBoundaryResponse()
        with self._store.transaction(job=request.job_id):
            job = self._session_job(request.job_id, request.session_id, "report")
            self._store.put_report(job.job_id, request.boundary, time.time(), _stored_report(request))
            for result in request.results:
                self._record_result(job, result)
            self._decisions.breaker_prunes(job, request)
            stored = {r.scaffold_id: self._update_scaffold(job.job_id, request.boundary, r) for r in request.scaffolds}
            for event in request.safety_events:
                self._events.emit(
                    job.job_id,
                    job_pb2.EVENT_KIND_SAFETY_EVENT,
                    f"{event.kind} on scaffold {event.scaffold_id} at step {event.step}: {event.detail}",
                    scaffold_id=event.scaffold_id,
                    kind=event.kind,
                )
            job.last_boundary = request.boundary
            job.last_step = request.step
            if request.HasField("probe_loss"):
                job.last_probe_loss = request.probe_loss
            job.last_seen_at.FromNanoseconds(time.time_ns())
            self._store.put_job(job)
            # Decisions made from this very report go back in its answer.
            response.decisions.extend(self._decisions.decide(job, request, stored))
            policy = job_policy_of(self._store, job.job_id)
            response.decisions.extend(self._tactical.consider(job, request, policy))
            response.commands.extend(self._deliver(job, request.boundary, policy))
            self._refresh_live_count(job)
            self._store.put_job(job)
            self._events.emit(
                job.job_id,
                job_pb2.EVENT_KIND_BOUNDARY_REPORTED,
                f"boundary {request.boundary} at step {request.step}",
                boundary=request.boundary,
                step=request.step,
                delivered=len(response.commands),
            )
        return response

    def _record_result(self, job: job_pb2.Job, result: telemetry_pb2.CommandResult) -> None:
        record = self._store.get_command(job.job_id, result.command_id)
        if record is None:
            # A command Narset never issued (submitted locally in the job): nothing to record.
            log.info("report.foreign_result", job_id=job.job_id, command_id=result.command_id)
            return
        if record.state in (_S.COMMAND_STATE_APPLIED, _S.COMMAND_STATE_REJECTED):
            return  # a retried report: the result is already recorded
        applied = result.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED
        record.state = _S.COMMAND_STATE_APPLIED if applied else _S.COMMAND_STATE_REJECTED
        record.applied_boundary = result.boundary
        record.result_message = result.message
        record.updated_at.FromNanoseconds(time.time_ns())
        self._store.put_command(record)
        action = record.command.WhichOneof("action")
        if not applied and action == "deploy":
            self._store.delete_scaffold(job.job_id, record.scaffold_id)
        self._events.emit(
            job.job_id,
            job_pb2.EVENT_KIND_COMMAND_APPLIED if applied else job_pb2.EVENT_KIND_COMMAND_REJECTED,
            f"{action} {record.scaffold_id} {'applied' if applied else 'rejected'} at boundary {result.boundary}"
            + (f": {result.message}" if result.message else ""),
            command_id=record.command.command_id,
            scaffold_id=record.scaffold_id,
        )

    def _update_scaffold(self, job_id: str, boundary: int, report: telemetry_pb2.ScaffoldReport) -> job_pb2.Scaffold:
        """Store the reported state of one scaffold (adopting one Narset did not deploy); returns it."""
        scaffold = self._store.get_scaffold(job_id, report.scaffold_id)
        if scaffold is None:
            # Deployed without Narset (local mode before attach): adopt it.
            scaffold = job_pb2.Scaffold(
                scaffold_id=report.scaffold_id,
                job_id=job_id,
                module=report.module,
                blueprint=report.blueprint,
                region=report.region or report.module,
                deployed_boundary=boundary,
            )
            # The policy it runs under; from a worker that reports none, the blueprint's defaults.
            scaffold.policy.CopyFrom(
                report.policy
                if report.HasField("policy")
                else effective_policy(
                    self._blueprints.get(job_id, report.blueprint) or job_pb2.Blueprint(), command_pb2.ScaffoldPolicy()
                )
            )
            scaffold.policy.ttl_ckpts = report.ttl_ckpts
        if scaffold.stage == telemetry_pb2.SCAFFOLD_STAGE_PENDING and report.stage in LIVE_STAGES:
            # A report carries the scaffold as the previous boundary left it (the worker measures and
            # reports before it applies anything), and age counts from the boundary that applied the
            # deploy: that boundary's own report is the last one without the scaffold.
            scaffold.deployed_boundary = boundary - 1 - report.age_ckpts
        scaffold.stage = report.stage
        scaffold.alpha = report.alpha
        scaffold.age_ckpts = report.age_ckpts
        scaffold.ttl_ckpts = report.ttl_ckpts
        scaffold.extensions = report.extensions
        scaffold.gates.CopyFrom(report.gates)
        self._store.put_scaffold(scaffold)
        self._store.add_scaffold_history(
            job_id,
            scaffold.scaffold_id,
            job_pb2.ScaffoldBoundary(boundary=boundary, stage=report.stage, alpha=report.alpha, gates=report.gates),
        )
        return scaffold

    def _deliver(
        self, job: job_pb2.Job, boundary: int, policy: job_pb2.JobPolicy
    ) -> list[command_pb2.AdaptationCommand]:
        """Commands due now, in ledger order, within the per-boundary fold and prune budgets and the
        answer's room for commands (a command is at most a quarter of it: the guard's limit).

        Commands delivered earlier without a result yet are sent again (the worker dedups by id).
        """
        budget = {"fold": policy.max_folds_per_boundary, "prune": policy.max_prunes_per_boundary}
        due: list[command_pb2.AdaptationCommand] = []
        room = self._command_bytes
        for record in self._store.list_commands(job.job_id, IN_FLIGHT):
            action = record.command.WhichOneof("action")
            if budget.get(action, 1) <= 0:
                continue  # over this boundary's budget: stays queued, and holds back none after it
            size = record.command.ByteSize()
            if due and size > room:
                break  # the answer is full: this command and the later ones are delivered next time
            if action in budget:
                budget[action] -= 1
            room -= size
            due.append(record.command)
            if record.state == _S.COMMAND_STATE_PENDING:
                record.state = _S.COMMAND_STATE_DELIVERED
                record.delivered_boundary = boundary
                record.updated_at.FromNanoseconds(time.time_ns())
                self._store.put_command(record)
                self._events.emit(
                    job.job_id,
                    job_pb2.EVENT_KIND_COMMAND_DELIVERED,
                    f"{action} {record.scaffold_id} delivered at boundary {boundary}",
                    command_id=record.command.command_id,
                    scaffold_id=record.scaffold_id,
                )
        return due

    # detach -------------------------------------------------------------------------------------

    def detach(self, request: worker_service_pb2.DetachRequest) -> None:
        with self._store.transaction(job=request.job_id):
            job = self._session_job(request.job_id, request.session_id, "detach")
            job.state = job_pb2.JOB_STATE_DETACHED
            self._store.put_job(job)
            self._events.emit(
                job.job_id, job_pb2.EVENT_KIND_JOB_DETACHED, f"job detached: {request.reason or 'no reason given'}"
            )
