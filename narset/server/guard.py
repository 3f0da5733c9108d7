"""The one gate every RPC of Narset's two services passes: identity, limits, audit, and no status a
method was not written to give.

A server interceptor wraps each method. In order, it authenticates the call's bearer token
(`narset.server.identity`), decodes the request itself (undecodable bytes are INVALID_ARGUMENT with
reason MALFORMED_REQUEST, not UNKNOWN), checks every field against the documented limits
(`narset.contract.limits`) before any logic runs, checks that the caller's role admits the method
and its job patterns the job, and runs the method. A mutating method runs inside one store
transaction together with its audit entry, so the change and its record commit or vanish together.
An answer over the message limit is refused (ANSWER_TOO_LARGE), a mutating call's inside its
transaction. A `Refusal` becomes its status (and an audit entry, for a mutating call or an identity refusal),
and so does a store failure that passes (`StoreUnavailable`: UNAVAILABLE, STORE_UNAVAILABLE, nothing
changed); anything else is INTERNAL with a generic message, logged with its traceback and the method.
Each call is timed and counted by status code, each refusal by reason (`narset.server.metrics`).

The services' unary methods are synchronous: nothing can interleave inside their transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import structlog
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from narset.contract import reasons
from narset.contract.limits import MAX_COMMAND_BYTES, limit_error
from narset.contract.scaffold_policy import FieldError
from narset.control.errors import Refusal
from narset.control.ledger import ACTIONS
from narset.server._refusals import abort_refused
from narset.server.audit import MUTATING, AuditedCall, decision_entries, entry
from narset.server.identity import CALLER, Authority
from narset.server.metrics import Metrics
from narset.store import Store, StoreUnavailable
from narset.v1 import operator_service_pb2, worker_service_pb2

__all__ = ["INTERNAL_MESSAGE", "SERVICES", "Guard"]

log = structlog.get_logger("narset.server")

SERVICES = (
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"],
)
# The worker's requests name their fields from a prefix; the operator's from the request itself.
_FIELD_PREFIX = {"Attach": "attach", "ReportBoundary": "report", "Detach": "detach"}
_IDENTITY_STATUSES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
INTERNAL_MESSAGE = "internal error in Narset; its log has the details"

Behavior = Callable[[Message, grpc.aio.ServicerContext], Message]
StreamBehavior = Callable[[Message, grpc.aio.ServicerContext], AsyncIterator[Message]]


def _checked_request(method: MethodDescriptor, raw: bytes, command_limit: int) -> Message:
    """The decoded request, if every field is within the limits; else a Refusal naming the field."""
    try:
        request = GetMessageClass(method.input_type).FromString(raw)
    except DecodeError as error:
        raise Refusal(
            reasons.MALFORMED_REQUEST, "request", f"does not decode as a {method.input_type.name}: {error}"
        ) from None
    if method.name == "SubmitCommand":
        size = request.command.ByteSize()
        if size > command_limit:  # several commands must fit one boundary's answer
            raise Refusal(reasons.INVALID_FIELD, "command", f"is {size} bytes encoded; at most {command_limit}")
        error = limit_error(request.command, "command")
        if error is not None and error.field.split(".")[1] in ACTIONS:
            # A command's action fields are named from the action ("deploy.module"), as the ledger does.
            error = FieldError(error.field.removeprefix("command."), error.reason)
    else:
        error = limit_error(request, _FIELD_PREFIX.get(method.name, ""))
    if error is not None:
        raise Refusal(reasons.INVALID_FIELD, error.field, error.reason)
    return request


def _refusal(error: Refusal | StoreUnavailable) -> Refusal:
    """`error` as the refusal the call is answered with."""
    if isinstance(error, Refusal):
        return error
    # The store rolled the call's transaction back: the same call may be made again, here or elsewhere.
    return Refusal(
        reasons.STORE_UNAVAILABLE, "request", f"the store could not complete the call now ({error}); nothing changed"
    )


def _job_of(method: MethodDescriptor, request: Message) -> tuple[str, str] | None:
    """(field, job id) of the job a request acts on; None for a request about no job."""
    if method.name == "SubmitCommand":
        return "command.job_id", request.command.job_id
    if "job_id" not in request.DESCRIPTOR.fields_by_name:
        return None
    if method.name == "ListBlueprints" and not request.job_id:
        return None  # the built-ins alone: about no job
    prefix = _FIELD_PREFIX.get(method.name)
    return (f"{prefix}.job_id" if prefix else "job_id"), request.job_id


class Guard(grpc.aio.ServerInterceptor):
    """Wraps every method of the worker and operator services; other services (health, reflection) pass."""

    def __init__(self, authority: Authority, store: Store, metrics: Metrics, message_limit: int) -> None:
        self._authority = authority
        self._store = store
        self._metrics = metrics
        self._message_limit = message_limit
        # A quarter of the limit at most: the exchange fills half an answer with commands, so two always fit.
        self._command_limit = min(MAX_COMMAND_BYTES, message_limit // 4)
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
                self._guard_unary(method, handler.unary_unary), response_serializer=handler.response_serializer
            )
        return grpc.unary_stream_rpc_method_handler(
            self._guard_stream(method, handler.unary_stream), response_serializer=handler.response_serializer
        )

    def _admit(self, call: AuditedCall, method: MethodDescriptor, raw: bytes, context) -> Message:
        """Authenticate, decode and authorize; the request, with the caller set for the method."""
        principal = self._authority.authenticate(context.invocation_metadata(), context.auth_context())
        call.principal, call.role = principal.name, principal.role
        request = _checked_request(method, raw, self._command_limit)
        call.learn(request)
        self._authority.authorize(principal, method.name, _job_of(method, request))
        CALLER.set(principal)
        return request

    def _fitting(self, response: Message) -> Message:
        """`response` if it fits the message limit (every client receives at most that), else a refusal."""
        size = response.ByteSize()
        if size > self._message_limit:
            raise Refusal(
                reasons.ANSWER_TOO_LARGE,
                "request",
                f"the answer would be {size} bytes, over the {self._message_limit}-byte message limit; ask for less",
            )
        return response

    def _run(self, call: AuditedCall, behavior: Behavior, request: Message, context) -> Message:
        if call.method not in MUTATING:
            return self._fitting(behavior(request, context))
        with self._store.transaction():
            # Refused inside the transaction: an answer too large to send changes nothing.
            response = self._fitting(behavior(request, context))
            if call.method == "SubmitCommand":
                call.command_id = response.record.command.command_id
            self._store.append_audit(entry(call, "OK"))
            if call.method == "ReportBoundary":
                for decided in decision_entries(call, list(response.decisions)):
                    self._store.append_audit(decided)
        return response

    def _audit(self, call: AuditedCall, outcome: str, refusal: Refusal | None = None) -> None:
        """Record a failed call if it was a mutating one or an identity refusal; never raises."""
        identity = refusal is not None and refusal.status in _IDENTITY_STATUSES
        if call.method not in MUTATING and not identity:
            return
        try:
            with self._store.transaction():
                self._store.append_audit(entry(call, outcome, refusal))
        except Exception:
            log.exception("audit.failed", rpc=call.method)

    def _done(self, call: AuditedCall, code: grpc.StatusCode, started: float) -> None:
        """Count a finished call (its duration from `started`, a `perf_counter`)."""
        self._metrics.rpc_done(call.method, code, time.perf_counter() - started)

    async def _refuse(self, call: AuditedCall, context, error: Refusal | StoreUnavailable, started: float) -> None:
        """Count, audit and answer a refused call; counted before the abort (the status reaches the
        client as the abort is awaited)."""
        refusal = _refusal(error)
        self._done(call, refusal.status, started)
        self._metrics.refusals.labels(refusal.reason).inc()
        self._audit(call, refusal.status.name, refusal)
        await abort_refused(context, call.method, refusal)

    async def _fail(self, call: AuditedCall, context, started: float) -> None:
        """Answer INTERNAL for a fault of Narset itself; call from an `except` block (the log has its traceback)."""
        self._done(call, grpc.StatusCode.INTERNAL, started)
        log.exception("request.failed", rpc=call.method, peer=call.peer)
        self._audit(call, grpc.StatusCode.INTERNAL.name)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    def _guard_unary(self, method: MethodDescriptor, behavior: Behavior):
        async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            call = AuditedCall(method.name, context.peer())
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                return self._run(call, behavior, self._admit(call, method, raw, context), context)
            except (Refusal, StoreUnavailable) as error:
                code = None
                await self._refuse(call, context, error, started)
            except grpc.aio.AbortError:
                code = context.code()  # the status the method aborted with
                raise
            except Exception:
                code = None
                await self._fail(call, context, started)
            finally:
                if code is not None:
                    self._done(call, code, started)

        return guarded

    def _guard_stream(self, method: MethodDescriptor, behavior: StreamBehavior):
        async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
            call = AuditedCall(method.name, context.peer())
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                async for response in behavior(self._admit(call, method, raw, context), context):
                    yield self._fitting(response)
            except (Refusal, StoreUnavailable) as error:
                code = None
                await self._refuse(call, context, error, started)
            except grpc.aio.AbortError:
                code = context.code()  # the status the method aborted with
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED  # the client went away (a watch stream ends so)
                raise
            except Exception:
                code = None
                await self._fail(call, context, started)
            finally:
                if code is not None:
                    self._done(call, code, started)

        return guarded
