"""Turns a `Refusal` raised by Narset's logic into the gRPC status it carries, with its rich details.

The status message stays "field: message" for people; programs read the `google.rpc.ErrorInfo`
(reason code, field) and `google.rpc.BadRequest` (every bad field) details, decoded by
`narset.contract.reasons.read_reason`.

Both travel in trailing metadata, which a gRPC client refuses beyond its metadata limit (8 KiB by
default; between that and twice it, at random) with a RESOURCE_EXHAUSTED of its own, the refusal
lost. Refusals clip what they echo by characters, but gRPC percent-encodes each non-ASCII or control
byte of the message as three, so the texts are fitted here to a budget in encoded bytes.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import NoReturn

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from narset.contract import reasons
from narset.contract.limits import SHOWN_CHARS
from narset.control.errors import Refusal

__all__ = ["MESSAGE_BUDGET", "abort_refused"]

log = structlog.get_logger("narset.server")

# Encoded bytes of the status message, and of all field violations together: the trailers stay
# under ~6 KiB (the details are sent in base64) whatever a refusal echoes.
MESSAGE_BUDGET = 1200
_VIOLATIONS_BUDGET = 2000
_CUT = "..."


def _cost(text: str) -> int:
    """Bytes `text` takes in grpc-message, which percent-encodes all but printable ASCII (and "%")."""
    return sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode("utf-8", "surrogatepass")) for c in text)


def _fit(text: str, budget: int) -> str:
    """The longest prefix of `text` costing at most `budget` encoded bytes, marked when cut."""
    if _cost(text) <= budget:
        return text
    costs = list(accumulate(_cost(c) for c in text))
    return text[: bisect_right(costs, budget - len(_CUT))] + _CUT


def _violations(refusal: Refusal) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """A violation per bad field while the budget lasts: the first always, cut as the message is."""
    fitted, left = [], _VIOLATIONS_BUDGET
    for violation in refusal.violations:
        field = _fit(violation.field, SHOWN_CHARS)
        # The reason fitted to what the field leaves of the message's budget: cut where the message's
        # "field: reason" is cut, so the first description is the message's tail, whatever the field costs.
        description = _fit(violation.reason, MESSAGE_BUDGET - _cost(field) - 2)
        cost = _cost(field) + _cost(description)
        if fitted and cost > left:
            break  # the message still names it
        fitted.append(error_details_pb2.BadRequest.FieldViolation(field=field, description=description))
        left -= cost
    return fitted


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _refusal_status(refusal: Refusal) -> status_pb2.Status:
    """The `google.rpc.Status` of `refusal`: code, "field: message", ErrorInfo and BadRequest."""
    field = _fit(refusal.field, SHOWN_CHARS)
    info = error_details_pb2.ErrorInfo(
        reason=refusal.reason, domain=reasons.DOMAIN, metadata={reasons.FIELD_KEY: field}
    )
    bad_request = error_details_pb2.BadRequest(field_violations=_violations(refusal))
    return status_pb2.Status(
        code=refusal.status.value[0],
        message=_fit(f"{field}: {refusal.message}", MESSAGE_BUDGET),
        details=[_packed(info), _packed(bad_request)],
    )


async def abort_refused(context: grpc.aio.ServicerContext, rpc: str, refusal: Refusal) -> NoReturn:
    """End the RPC with `refusal`'s status; raises, as `abort` does."""
    log.info("request.refused", rpc=rpc, code=refusal.status.name, reason=refusal.reason, message=str(refusal))
    await context.abort_with_status(rpc_status.to_status(_refusal_status(refusal)))
    raise AssertionError("unreachable: abort raises") from refusal
