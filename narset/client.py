"""Python client for Narset's operator API (the CLI and tests use it).

with NarsetClient("127.0.0.1:50051") as narset:
    record = narset.submit(deploy_command("run-7", module="fc1", blueprint="lora"))

The token and TLS files come from the arguments, else the environment (`narset.contract.connection`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from narset.contract.connection import Connection
from narset.contract.reasons import STORE_UNAVAILABLE, read_reason
from narset.v1 import command_pb2, job_pb2, operator_service_pb2_grpc, telemetry_pb2
from narset.v1 import operator_service_pb2 as pb

__all__ = ["DEFAULT_ADDRESS", "NarsetClient", "NarsetError", "resolve_address"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "NARSET_SERVER"
# A call answered STORE_UNAVAILABLE changed nothing, so any call is made again, after each of these
# pauses in turn (by then a lock may be free, or the balancer has picked another replica).
STORE_RETRY_PAUSES_S = (0.1, 0.2, 0.4)


def resolve_address(address: str | None) -> str:
    """`address`, else $NARSET_SERVER, else the default."""
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


class NarsetError(Exception):
    """A call Narset refused or could not answer.

    `code` is the gRPC status and `details` its message; a refusal also has `reason`, its stable code
    (narset.contract.reasons), and `field`, the offending field. Both are "" for any other error.
    """

    def __init__(self, code: grpc.StatusCode, details: str, reason: str = "", field: str = "") -> None:
        self.code = code
        self.details = details
        self.reason = reason
        self.field = field
        super().__init__(f"{code.name}: {details}")

    def __reduce__(self):
        # Pickled with its fields (Exception pickles only `args`), so it crosses a process pool intact.
        return type(self), (self.code, self.details, self.reason, self.field)

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> NarsetError:
        reason, field = read_reason(rpc_status.from_call(error))
        return cls(error.code(), error.details() or "", reason, field)


class NarsetClient:
    """Blocking operator client over one channel; close it (or use `with`) when done."""

    def __init__(
        self, address: str | None = None, timeout_s: float = 10.0, connection: Connection | None = None
    ) -> None:
        self.address = resolve_address(address)
        self.timeout_s = timeout_s
        connection = connection or Connection.resolve()
        self._metadata = connection.metadata
        self._channel = connection.channel(self.address)
        self._stub = operator_service_pb2_grpc.OperatorServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NarsetClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        self.close()

    def _call(self, method: str, request):
        for pause in (*STORE_RETRY_PAUSES_S, None):
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as error:
                failed = NarsetError.from_rpc(error)
            if failed.reason != STORE_UNAVAILABLE or pause is None:
                raise failed
            time.sleep(pause)
        raise AssertionError("unreachable")

    def _pages(self, method: str, request, field: str) -> list:
        """Every entry of a paged list: the pages Narset answers, each within the message limit."""
        entries = []
        while True:
            response = self._call(method, request)
            entries.extend(getattr(response, field))
            if not response.next_page_token:
                return entries
            request.page_token = response.next_page_token

    def list_jobs(self) -> list[job_pb2.Job]:
        return self._pages("ListJobs", pb.ListJobsRequest(), "jobs")

    def get_job(self, job_id: str) -> pb.GetJobResponse:
        return self._call("GetJob", pb.GetJobRequest(job_id=job_id))

    def list_modules(self, job_id: str) -> list[job_pb2.ModuleInfo]:
        return list(self._call("ListModules", pb.ListModulesRequest(job_id=job_id)).modules)

    def list_blueprints(self, job_id: str = "") -> list[job_pb2.Blueprint]:
        """The built-in blueprints, and `job_id`'s own if a job is named."""
        return list(self._call("ListBlueprints", pb.ListBlueprintsRequest(job_id=job_id)).blueprints)

    def submit(self, command: command_pb2.AdaptationCommand) -> pb.SubmitCommandResponse:
        return self._call("SubmitCommand", pb.SubmitCommandRequest(command=command))

    def list_scaffolds(self, job_id: str, include_ended: bool = False) -> list[job_pb2.Scaffold]:
        request = pb.ListScaffoldsRequest(job_id=job_id, include_ended=include_ended)
        return list(self._call("ListScaffolds", request).scaffolds)

    def get_scaffold(self, job_id: str, scaffold_id: str) -> job_pb2.Scaffold:
        return self._call("GetScaffold", pb.GetScaffoldRequest(job_id=job_id, scaffold_id=scaffold_id)).scaffold

    def list_commands(self, job_id: str, states: Iterable[int] = ()) -> list[command_pb2.CommandRecord]:
        return self._pages("ListCommands", pb.ListCommandsRequest(job_id=job_id, states=list(states)), "commands")

    def list_decisions(self, job_id: str) -> list[telemetry_pb2.Decision]:
        return list(self._call("ListDecisions", pb.ListDecisionsRequest(job_id=job_id)).decisions)

    def get_policy(self, job_id: str) -> job_pb2.JobPolicy:
        return self._call("GetPolicy", pb.GetPolicyRequest(job_id=job_id)).policy

    def set_policy(self, job_id: str, policy: job_pb2.JobPolicy) -> job_pb2.JobPolicy:
        return self._call("SetPolicy", pb.SetPolicyRequest(job_id=job_id, policy=policy)).policy

    def health(self, service: str = "") -> str:
        """The `grpc.health.v1` status of `service` ("": the server as a whole), e.g. SERVING, NOT_SERVING."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise NarsetError.from_rpc(error) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def detach_job(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Free `job_id` for a new worker (its own died without detaching); the job as it is now."""
        return self._call("DetachJob", pb.DetachJobRequest(job_id=job_id, reason=reason)).job

    def list_audit(self, job_id: str = "", after_sequence: int = 0, limit: int = 0) -> list[pb.AuditEntry]:
        request = pb.ListAuditRequest(job_id=job_id, after_sequence=after_sequence, limit=limit)
        return list(self._call("ListAudit", request).entries)

    def watch(self, job_id: str = "", after_sequence: int = 0, follow: bool = True) -> Iterator[job_pb2.Event]:
        """Events of `job_id` (or all jobs); with `follow` it blocks for new ones until cancelled."""
        request = pb.WatchEventsRequest(job_id=job_id, after_sequence=after_sequence, follow=follow)
        timeout = None if follow else self.timeout_s
        try:
            for response in self._stub.WatchEvents(request, timeout=timeout, metadata=self._metadata):
                yield response.event
        except grpc.RpcError as error:
            raise NarsetError.from_rpc(error) from None
