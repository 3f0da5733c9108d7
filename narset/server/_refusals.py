"""Turns a `Refusal` raised by Narset's logic into the gRPC status it carries, with its rich details.

The status message stays "field: message" for people; programs read the `google.rpc.ErrorInfo`
(reason code, field) and `google.rpc.BadRequest` (every bad field) details, decoded by
`narset.contract.reasons.read_reason`.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from narset.contract import reasons
from narset.control.errors import Refusal

__all__ = ["abort_refused"]

log = structlog.get_logger("narset.server")


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _refusal_status(refusal: Refusal) -> status_pb2.Status:
    """The `google.rpc.Status` of `refusal`: code, "field: message", ErrorInfo and BadRequest."""
    info = error_details_pb2.ErrorInfo(
        reason=refusal.reason, domain=reasons.DOMAIN, metadata={reasons.FIELD_KEY: refusal.field}
    )
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.reason) for v in refusal.violations
        ]
    )
    return status_pb2.Status(
        code=refusal.status.value[0], message=str(refusal), details=[_packed(info), _packed(bad_request)]
    )


async def abort_refused(context: grpc.aio.ServicerContext, rpc: str, refusal: Refusal) -> NoReturn:
    """End the RPC with `refusal`'s status; raises, as `abort` does."""
    log.info("request.refused", rpc=rpc, code=refusal.status.name, reason=refusal.reason, message=str(refusal))
    await context.abort_with_status(rpc_status.to_status(_refusal_status(refusal)))
    raise AssertionError("unreachable: abort raises") from refusal
