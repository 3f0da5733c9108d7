"""What the append-only audit log records of a call: who, which method, which job and command, from
which peer, how it ended (docs/design.md, section 7).

The guard writes an entry for every mutating call (in the transaction of its change) and for every
refusal of one, and for every identity refusal of any call; a report also records each decision
Narset made from it, under the decision's own principal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from google.protobuf.message import Message

from narset.contract.limits import SHOWN_CHARS, clip, shown
from narset.control.errors import Refusal
from narset.v1 import operator_service_pb2, telemetry_pb2

__all__ = ["MUTATING", "AuditedCall", "decision_entries", "entry"]

MUTATING = frozenset({"Attach", "ReportBoundary", "Detach", "SubmitCommand", "SetPolicy", "DetachJob"})


@dataclass(slots=True)
class AuditedCall:
    """One call as the guard sees it; fields fill in as the call is decoded and authenticated."""

    method: str
    peer: str
    principal: str = ""
    role: str = ""
    job_id: str = ""
    command_id: str = ""
    detail: str = ""  # what the caller stated beyond its identity (an issuer), or a decision's reason

    def learn(self, request: Message) -> None:
        """Take the job, the command id, a claimed issuer and a stated reason from the decoded request."""
        command = getattr(request, "command", None)
        if isinstance(command, Message):
            self.job_id, self.command_id = command.job_id, command.command_id
            if command.issued_by and command.issued_by != self.principal:
                self.detail = f"claimed issued_by {shown(command.issued_by)}"
        elif "job_id" in request.DESCRIPTOR.fields_by_name:
            self.job_id = request.job_id
        if "reason" in request.DESCRIPTOR.fields_by_name and request.reason:
            self.detail = f"reason {shown(request.reason)}"  # why a job was detached


def entry(call: AuditedCall, outcome: str, refusal: Refusal | None = None) -> operator_service_pb2.AuditEntry:
    """The audit entry of `call`, ended with `outcome` ("OK" or a status name) or `refusal`."""
    record = operator_service_pb2.AuditEntry(
        principal=call.principal,
        role=call.role,
        peer=clip(call.peer, SHOWN_CHARS),
        method=call.method,
        job_id=clip(call.job_id, SHOWN_CHARS),
        command_id=clip(call.command_id, SHOWN_CHARS),
        outcome=refusal.status.name if refusal is not None else outcome,
        reason=refusal.reason if refusal is not None else "",
        detail=str(refusal) if refusal is not None else call.detail,
    )
    record.at.FromNanoseconds(time.time_ns())
    return record


def decision_entries(
    call: AuditedCall, decisions: list[telemetry_pb2.Decision]
) -> list[operator_service_pb2.AuditEntry]:
    """An entry per decision Narset made from a report, under the principal that made it."""
    entries = []
    for decision in decisions:
        audited = AuditedCall(
            method="Decision",
            peer=call.peer,
            principal=decision.issued_by,
            role="narset",
            job_id=decision.job_id,
            command_id=decision.command_id,
            detail=clip(decision.reason, SHOWN_CHARS),
        )
        outcome = telemetry_pb2.DecisionOutcome.Name(decision.outcome).removeprefix("DECISION_OUTCOME_")
        entries.append(entry(audited, outcome))
    return entries
