"""The one error type Narset's logic raises: a refusal carrying its reason code and the bad field(s)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from narset.contract import reasons
from narset.contract.limits import SHOWN_MESSAGE_CHARS, clip
from narset.contract.scaffold_policy import FieldError

__all__ = ["STATUS_OF_REASON", "Refusal"]

# Each reason code always travels with the same gRPC status, so a caller may switch on either.
STATUS_OF_REASON = {
    reasons.INVALID_FIELD: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.MALFORMED_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.BLUEPRINT_DOES_NOT_FIT: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.PARAMETER_TIED: grpc.StatusCode.INVALID_ARGUMENT,
    reasons.JOB_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.MODULE_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.BLUEPRINT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.REGION_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.SCAFFOLD_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    reasons.SESSION_SUPERSEDED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.PROTOCOL_UNSUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.REGION_PROTECTED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.REGION_EMBARGOED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.MODULE_OCCUPIED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.SCAFFOLD_EXISTS: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.SCAFFOLD_PENDING: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.SCAFFOLD_ENDED: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.EXIT_IN_FLIGHT: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.EXTENSION_LIMIT: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.ROLLBACK_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.GATE_FAILING: grpc.StatusCode.FAILED_PRECONDITION,
    reasons.BUDGET_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.ANSWER_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    reasons.STORE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    reasons.TOKEN_MISSING: grpc.StatusCode.UNAUTHENTICATED,
    reasons.TOKEN_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    reasons.CERTIFICATE_UNKNOWN: grpc.StatusCode.UNAUTHENTICATED,
    reasons.ROLE_FORBIDS: grpc.StatusCode.PERMISSION_DENIED,
    reasons.JOB_OUT_OF_SCOPE: grpc.StatusCode.PERMISSION_DENIED,
    reasons.JOB_ATTACHED: grpc.StatusCode.PERMISSION_DENIED,
    reasons.SESSION_OF_ANOTHER_JOB: grpc.StatusCode.PERMISSION_DENIED,
    reasons.RESERVED_ISSUER: grpc.StatusCode.PERMISSION_DENIED,
}


class Refusal(Exception):
    """A request Narset refuses; changes nothing.

    `reason` is the stable code (narset.contract.reasons), `field` the first bad field, `message` the
    human explanation; `violations` lists every bad field (just `field` unless several were found).
    Field names and messages are clipped: they may echo a hostile value into statuses and logs.
    """

    def __init__(self, reason: str, field: str, message: str, violations: Sequence[FieldError] = ()) -> None:
        self.status = STATUS_OF_REASON[reason]
        self.reason = reason
        self.field = field = clip(field)
        self.message = message = clip(message, SHOWN_MESSAGE_CHARS)
        clipped = tuple(FieldError(clip(v.field), clip(v.reason, SHOWN_MESSAGE_CHARS)) for v in violations)
        self.violations = clipped or (FieldError(field, message),)
        super().__init__(f"{field}: {message}")

    @classmethod
    def of(cls, reason: str, errors: Sequence[FieldError]) -> Refusal:
        """Naming the first bad field, with every other one listed after it."""
        first, *rest = errors
        message = "; ".join([first.reason, *(str(e) for e in rest)])
        return cls(reason, first.field, message, errors)
