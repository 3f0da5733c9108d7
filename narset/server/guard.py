"""The one gate every RPC of Narset's two services passes, so that no request can make a method fail
in a way it was not written for.

A server interceptor wraps each method: it decodes the request itself (undecodable bytes are
INVALID_ARGUMENT with reason MALFORMED_REQUEST, not UNKNOWN), checks every field against the
documented limits (`narset.contract.limits`) before any logic runs, turns a `Refusal` into its
status, and answers anything else INTERNAL with a generic message, logged with its traceback and
the method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import structlog
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from narset.contract import reasons
from narset.contract.limits import limit_error
from narset.contract.scaffold_policy import FieldError
from narset.control.errors import Refusal
from narset.control.ledger import ACTIONS
from narset.server._refusals import abort_refused
from narset.v1 import operator_service_pb2, worker_service_pb2

__all__ = ["Guard"]

log = structlog.get_logger("narset.server")

SERVICES = (
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"],
)
# The worker's requests name their fields from a prefix; the operator's from the request itself.
_FIELD_PREFIX = {"Attach": "attach", "ReportBoundary": "report", "Detach": "detach"}
INTERNAL_MESSAGE = "internal error in Narset; its log has the details"


def _checked_request(method: MethodDescriptor, raw: bytes) -> Message:
    """The decoded request, if every field is within the limits; else a Refusal naming the field."""
    try:
        request = GetMessageClass(method.input_type).FromString(raw)
    except DecodeError as error:
        raise Refusal(
            reasons.MALFORMED_REQUEST, "request", f"does not decode as a {method.input_type.name}: {error}"
        ) from None
    if method.name == "SubmitCommand":
        error = limit_error(request.command, "command")
        if error is not None and error.field.split(".")[1] in ACTIONS:
            # A command's action fields are named from the action ("deploy.module"), as the ledger does.
            error = FieldError(error.field.removeprefix("command."), error.reason)
    else:
        error = limit_error(request, _FIELD_PREFIX.get(method.name, ""))
    if error is not None:
        raise Refusal(reasons.INVALID_FIELD, error.field, error.reason)
    return request


async def _fail(context: grpc.aio.ServicerContext, method: MethodDescriptor) -> None:
    """Answer INTERNAL for an error of Narset itself; call from an `except` block (the log has its traceback)."""
    log.exception("request.failed", rpc=method.name, peer=context.peer())
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _guard_unary(
    method: MethodDescriptor, behavior: Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
    async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            return await behavior(_checked_request(method, raw), context)
        except Refusal as refusal:
            await abort_refused(context, method.name, refusal)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _fail(context, method)

    return guarded


def _guard_stream(
    method: MethodDescriptor, behavior: Callable[[Message, grpc.aio.ServicerContext], AsyncIterator[Message]]
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Message]]:
    async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        try:
            async for response in behavior(_checked_request(method, raw), context):
                yield response
        except Refusal as refusal:
            await abort_refused(context, method.name, refusal)
        except grpc.aio.AbortError:
            raise
        except Exception:
            await _fail(context, method)

    return guarded


class Guard(grpc.aio.ServerInterceptor):
    """Wraps every method of the worker and operator services; other services (health, reflection) pass."""

    def __init__(self) -> None:
        self._methods = {f"/{service.full_name}/{m.name}": m for service in SERVICES for m in service.methods}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = self._methods.get(handler_call_details.method)
        if handler is None or method is None:
            return handler
        # No request deserializer: the guarded behaviour gets the raw bytes and decodes them itself.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(method, handler.unary_unary), response_serializer=handler.response_serializer
            )
        return grpc.unary_stream_rpc_method_handler(
            _guard_stream(method, handler.unary_stream), response_serializer=handler.response_serializer
        )
