"""The stable reason codes of Narset's refusals, and how a caller reads them from an error.

A refusal is a gRPC status (code + "field: message") carrying `google.rpc.ErrorInfo(reason=<code>,
domain=DOMAIN, metadata={FIELD_KEY: field})` and a `google.rpc.BadRequest` with a field violation
per bad field. Programs switch on the reason code, never on the message, which may be reworded.
Each code always comes with the same gRPC status code; each is documented, with the service that
gives it, in proto/narset/v1/worker_service.proto and operator_service.proto.
"""

from __future__ import annotations

from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "ANSWER_TOO_LARGE",
    "BLUEPRINT_DOES_NOT_FIT",
    "BLUEPRINT_NOT_FOUND",
    "BUDGET_EXCEEDED",
    "CERTIFICATE_UNKNOWN",
    "DOMAIN",
    "EXIT_IN_FLIGHT",
    "EXTENSION_LIMIT",
    "FIELD_KEY",
    "GATE_FAILING",
    "INVALID_FIELD",
    "JOB_ATTACHED",
    "JOB_NOT_FOUND",
    "JOB_OUT_OF_SCOPE",
    "MALFORMED_REQUEST",
    "MODULE_NOT_FOUND",
    "MODULE_OCCUPIED",
    "PARAMETER_TIED",
    "PROTOCOL_UNSUPPORTED",
    "REASONS",
    "REGION_EMBARGOED",
    "REGION_NOT_FOUND",
    "REGION_PROTECTED",
    "RESERVED_ISSUER",
    "ROLE_FORBIDS",
    "ROLLBACK_UNAVAILABLE",
    "SCAFFOLD_ENDED",
    "SCAFFOLD_EXISTS",
    "SCAFFOLD_NOT_FOUND",
    "SCAFFOLD_PENDING",
    "SESSION_OF_ANOTHER_JOB",
    "SESSION_SUPERSEDED",
    "STORE_UNAVAILABLE",
    "TOKEN_INVALID",
    "TOKEN_MISSING",
    "read_reason",
]

DOMAIN = "narset"  # ErrorInfo.domain of every Narset refusal
FIELD_KEY = "field"  # ErrorInfo.metadata key naming the offending field

# INVALID_ARGUMENT: the request itself is wrong; resending it unchanged is refused again.
INVALID_FIELD = "INVALID_FIELD"
MALFORMED_REQUEST = "MALFORMED_REQUEST"
BLUEPRINT_DOES_NOT_FIT = "BLUEPRINT_DOES_NOT_FIT"
PARAMETER_TIED = "PARAMETER_TIED"
# NOT_FOUND
JOB_NOT_FOUND = "JOB_NOT_FOUND"
MODULE_NOT_FOUND = "MODULE_NOT_FOUND"
BLUEPRINT_NOT_FOUND = "BLUEPRINT_NOT_FOUND"
REGION_NOT_FOUND = "REGION_NOT_FOUND"
SCAFFOLD_NOT_FOUND = "SCAFFOLD_NOT_FOUND"
# FAILED_PRECONDITION: the request is well formed but the job's state forbids it now.
SESSION_SUPERSEDED = "SESSION_SUPERSEDED"
PROTOCOL_UNSUPPORTED = "PROTOCOL_UNSUPPORTED"
REGION_PROTECTED = "REGION_PROTECTED"
REGION_EMBARGOED = "REGION_EMBARGOED"
MODULE_OCCUPIED = "MODULE_OCCUPIED"
SCAFFOLD_EXISTS = "SCAFFOLD_EXISTS"
SCAFFOLD_PENDING = "SCAFFOLD_PENDING"
SCAFFOLD_ENDED = "SCAFFOLD_ENDED"
EXIT_IN_FLIGHT = "EXIT_IN_FLIGHT"
EXTENSION_LIMIT = "EXTENSION_LIMIT"
ROLLBACK_UNAVAILABLE = "ROLLBACK_UNAVAILABLE"
GATE_FAILING = "GATE_FAILING"
# RESOURCE_EXHAUSTED
BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
ANSWER_TOO_LARGE = "ANSWER_TOO_LARGE"
# UNAVAILABLE: the call changed nothing and may be made again, here or on another replica.
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
# UNAUTHENTICATED: the call carries no token, or one Narset does not know (nor a client certificate it maps).
TOKEN_MISSING = "TOKEN_MISSING"
TOKEN_INVALID = "TOKEN_INVALID"
CERTIFICATE_UNKNOWN = "CERTIFICATE_UNKNOWN"
# PERMISSION_DENIED: the caller is known but may not do this.
ROLE_FORBIDS = "ROLE_FORBIDS"
JOB_OUT_OF_SCOPE = "JOB_OUT_OF_SCOPE"
JOB_ATTACHED = "JOB_ATTACHED"
SESSION_OF_ANOTHER_JOB = "SESSION_OF_ANOTHER_JOB"
RESERVED_ISSUER = "RESERVED_ISSUER"

REASONS = (
    INVALID_FIELD,
    MALFORMED_REQUEST,
    BLUEPRINT_DOES_NOT_FIT,
    PARAMETER_TIED,
    JOB_NOT_FOUND,
    MODULE_NOT_FOUND,
    BLUEPRINT_NOT_FOUND,
    REGION_NOT_FOUND,
    SCAFFOLD_NOT_FOUND,
    SESSION_SUPERSEDED,
    PROTOCOL_UNSUPPORTED,
    REGION_PROTECTED,
    REGION_EMBARGOED,
    MODULE_OCCUPIED,
    SCAFFOLD_EXISTS,
    SCAFFOLD_PENDING,
    SCAFFOLD_ENDED,
    EXIT_IN_FLIGHT,
    EXTENSION_LIMIT,
    ROLLBACK_UNAVAILABLE,
    GATE_FAILING,
    BUDGET_EXCEEDED,
    ANSWER_TOO_LARGE,
    STORE_UNAVAILABLE,
    TOKEN_MISSING,
    TOKEN_INVALID,
    CERTIFICATE_UNKNOWN,
    ROLE_FORBIDS,
    JOB_OUT_OF_SCOPE,
    JOB_ATTACHED,
    SESSION_OF_ANOTHER_JOB,
    RESERVED_ISSUER,
)


def read_reason(status: status_pb2.Status | None) -> tuple[str, str]:
    """(reason code, field) of a Narset refusal; ("", "") for any other error (unreachable, too large...)."""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == DOMAIN:
            return info.reason, info.metadata.get(FIELD_KEY, "")
    return "", ""
