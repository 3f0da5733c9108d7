"""OperatorService: what the `narset` CLI and the Python client call.

The unary methods are synchronous: the guard (narset/server/guard.py) runs each (a mutating one
inside one store transaction with its audit entry) with the caller authenticated and authorized.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from narset.contract import reasons
from narset.contract.stages import OCCUPYING_STAGES
from narset.control.errors import Refusal
from narset.control.events import EventHub
from narset.control.job_policy import job_policy_of, validate_job_policy
from narset.control.ledger import CommandLedger
from narset.server.identity import CALLER, check_claimed_issuer
from narset.store import Store
from narset.v1 import job_pb2, operator_service_pb2_grpc
from narset.v1 import operator_service_pb2 as pb

__all__ = ["OperatorService"]

AUDIT_PAGE = 1000  # entries a ListAudit answers when it names no limit, and the most it answers


class OperatorService(operator_service_pb2_grpc.OperatorServiceServicer):
    def __init__(self, store: Store, ledger: CommandLedger, events: EventHub) -> None:
        self._store = store
        self._ledger = ledger
        self._events = events

    def _job(self, job_id: str) -> job_pb2.Job:
        if not job_id:
            raise Refusal(reasons.INVALID_FIELD, "job_id", "is required")
        job = self._store.get_job(job_id)
        if job is None:
            raise Refusal(reasons.JOB_NOT_FOUND, "job_id", f"no job '{job_id}'")
        return job

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        caller = CALLER.get()
        return pb.ListJobsResponse(jobs=[job for job in self._store.list_jobs() if caller.covers(job.job_id)])

    def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        job = self._job(request.job_id)
        return pb.GetJobResponse(
            job=job, policy=job_policy_of(self._store, job.job_id), embargoes=self._store.list_embargoes(job.job_id)
        )

    def ListModules(self, request: pb.ListModulesRequest, context: grpc.aio.ServicerContext) -> pb.ListModulesResponse:
        job = self._job(request.job_id)
        return pb.ListModulesResponse(modules=self._store.list_modules(job.job_id))

    def ListBlueprints(
        self, request: pb.ListBlueprintsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBlueprintsResponse:
        return pb.ListBlueprintsResponse(blueprints=self._store.list_blueprints())

    def SubmitCommand(
        self, request: pb.SubmitCommandRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitCommandResponse:
        check_claimed_issuer("command.issued_by", request.command.issued_by)
        record, duplicate = self._ledger.accept(request.command, CALLER.get().name)
        return pb.SubmitCommandResponse(record=record, duplicate=duplicate)

    def ListScaffolds(
        self, request: pb.ListScaffoldsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListScaffoldsResponse:
        job = self._job(request.job_id)
        stages = () if request.include_ended else OCCUPYING_STAGES
        return pb.ListScaffoldsResponse(scaffolds=self._store.list_scaffolds(job.job_id, stages))

    def GetScaffold(self, request: pb.GetScaffoldRequest, context: grpc.aio.ServicerContext) -> pb.GetScaffoldResponse:
        job = self._job(request.job_id)
        scaffold = self._store.get_scaffold(job.job_id, request.scaffold_id)
        if scaffold is None:
            raise Refusal(
                reasons.SCAFFOLD_NOT_FOUND, "scaffold_id", f"job '{job.job_id}' has no scaffold '{request.scaffold_id}'"
            )
        scaffold.history.extend(self._store.scaffold_history(job.job_id, scaffold.scaffold_id))
        return pb.GetScaffoldResponse(scaffold=scaffold)

    def ListCommands(
        self, request: pb.ListCommandsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCommandsResponse:
        job = self._job(request.job_id)
        return pb.ListCommandsResponse(commands=self._store.list_commands(job.job_id, request.states))

    def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDecisionsResponse:
        job = self._job(request.job_id)
        return pb.ListDecisionsResponse(decisions=self._store.list_decisions(job.job_id))

    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        job = self._job(request.job_id)
        return pb.GetPolicyResponse(policy=job_policy_of(self._store, job.job_id))

    def SetPolicy(self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.SetPolicyResponse:
        job = self._job(request.job_id)
        validate_job_policy(request.policy, {b.name: b for b in self._store.list_blueprints()})
        with self._store.transaction():
            self._store.put_policy(job.job_id, request.policy)
            self._events.emit(
                job.job_id,
                job_pb2.EVENT_KIND_POLICY_CHANGED,
                f"policy changed (auto {'on' if request.policy.auto.enabled else 'off'})",
            )
        return pb.SetPolicyResponse(policy=request.policy)

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        self._check_watch(request)
        async for event in self._events.watch(request.job_id, request.after_sequence, request.follow):
            yield pb.WatchEventsResponse(event=event)

    def _check_watch(self, request: pb.WatchEventsRequest) -> None:
        if request.job_id:
            self._job(request.job_id)
        if request.after_sequence < 0:
            raise Refusal(reasons.INVALID_FIELD, "after_sequence", f"must be >= 0, got {request.after_sequence}")

    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.aio.ServicerContext) -> pb.ListAuditResponse:
        if request.after_sequence < 0:
            raise Refusal(reasons.INVALID_FIELD, "after_sequence", f"must be >= 0, got {request.after_sequence}")
        if not 0 <= request.limit <= AUDIT_PAGE:
            raise Refusal(reasons.INVALID_FIELD, "limit", f"must be in [0, {AUDIT_PAGE}], got {request.limit}")
        entries = self._store.list_audit(request.job_id, request.after_sequence, request.limit or AUDIT_PAGE)
        return pb.ListAuditResponse(entries=entries)
