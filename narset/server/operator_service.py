"""OperatorService: what the `narset` CLI and the Python client call.

The unary methods are synchronous: the guard (narset/server/guard.py) runs each (a mutating one
inside one store transaction with its audit entry) with the caller authenticated and authorized.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from narset.contract import reasons
from narset.contract.limits import MAX_MESSAGE_BYTES
from narset.contract.stages import OCCUPYING_STAGES
from narset.control.blueprints import BlueprintCatalogue
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
_SEQUENCE_TOKEN = re.compile(r"[0-9]{1,18}")  # a ledger sequence: a signed 64-bit integer in both stores
M = TypeVar("M", bound=Message)


_ENTRY_OVERHEAD = 10  # bytes of tag and length around each entry of a repeated field, at most


def _page(items: Sequence[M], budget: int) -> list[M]:
    """The longest prefix of `items` whose encoding fits `budget` bytes (at least one: a single entry
    too large for any page is refused by the guard, ANSWER_TOO_LARGE)."""
    page: list[M] = []
    for item in items:
        budget -= item.ByteSize() + _ENTRY_OVERHEAD
        if page and budget < 0:
            break
        page.append(item)
    return page


class OperatorService(operator_service_pb2_grpc.OperatorServiceServicer):
    def __init__(
        self, store: Store, ledger: CommandLedger, events: EventHub, message_limit: int = MAX_MESSAGE_BYTES
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._events = events
        self._blueprints = BlueprintCatalogue(store)
        # Bytes of entries one page of ListJobs or ListCommands carries: the message limit, less room
        # for the rest of the answer.
        self._page_bytes = message_limit - 1024

    def _job(self, job_id: str) -> job_pb2.Job:
        if not job_id:
            raise Refusal(reasons.INVALID_FIELD, "job_id", "is required")
        job = self._store.get_job(job_id)
        if job is None:
            raise Refusal(reasons.JOB_NOT_FOUND, "job_id", f"no job '{job_id}'")
        return job

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        caller = CALLER.get()
        # The token is the last job id of the previous page: jobs attached since then keep their place.
        jobs = [j for j in self._store.list_jobs() if j.job_id > request.page_token and caller.covers(j.job_id)]
        page = _page(jobs, self._page_bytes)
        more = len(page) < len(jobs)
        return pb.ListJobsResponse(jobs=page, next_page_token=page[-1].job_id if more else "")

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
        if request.job_id:
            self._job(request.job_id)  # an unknown job is NOT_FOUND, not a list of the built-ins
        return pb.ListBlueprintsResponse(blueprints=self._blueprints.list(request.job_id))

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
        # The token is the ledger sequence of the last command listed: a command keeps its sequence, so
        # one that changes state between pages (PENDING -> DELIVERED -> APPLIED) neither moves the next
        # page of a list filtered by state nor comes back on it.
        if request.page_token and not _SEQUENCE_TOKEN.fullmatch(request.page_token):
            raise Refusal(reasons.INVALID_FIELD, "page_token", "is not a token ListCommands gave")
        after = self._store.commands_after(job.job_id, int(request.page_token or 0), request.states)
        page = _page([record for _, record in after], self._page_bytes)
        more = len(page) < len(after)
        return pb.ListCommandsResponse(commands=page, next_page_token=str(after[len(page) - 1][0]) if more else "")

    def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDecisionsResponse:
        job = self._job(request.job_id)
        return pb.ListDecisionsResponse(decisions=self._store.list_decisions(job.job_id))

    def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        job = self._job(request.job_id)
        return pb.GetPolicyResponse(policy=job_policy_of(self._store, job.job_id))

    def SetPolicy(self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.SetPolicyResponse:
        with self._store.transaction(job=request.job_id):
            job = self._job(request.job_id)
            validate_job_policy(request.policy, {b.name: b for b in self._blueprints.list(job.job_id)})
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

    def DetachJob(self, request: pb.DetachJobRequest, context: grpc.aio.ServicerContext) -> pb.DetachJobResponse:
        """Free a job whose worker died: DETACHED, its session credential revoked; a repeat changes nothing."""
        with self._store.transaction(job=request.job_id):
            job = self._job(request.job_id)
            if job.state == job_pb2.JOB_STATE_ATTACHED:
                job.state = job_pb2.JOB_STATE_DETACHED
                self._store.put_job(job)
                self._store.set_session(job.job_id, "")
                self._events.emit(
                    job.job_id,
                    job_pb2.EVENT_KIND_JOB_DETACHED,
                    f"job detached by {CALLER.get().name}: {request.reason or 'no reason given'}",
                    by=CALLER.get().name,
                )
        return pb.DetachJobResponse(job=job)

    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.aio.ServicerContext) -> pb.ListAuditResponse:
        if request.after_sequence < 0:
            raise Refusal(reasons.INVALID_FIELD, "after_sequence", f"must be >= 0, got {request.after_sequence}")
        if not 0 <= request.limit <= AUDIT_PAGE:
            raise Refusal(reasons.INVALID_FIELD, "limit", f"must be in [0, {AUDIT_PAGE}], got {request.limit}")
        entries = self._store.list_audit(request.job_id, request.after_sequence, request.limit or AUDIT_PAGE)
        return pb.ListAuditResponse(entries=entries)
