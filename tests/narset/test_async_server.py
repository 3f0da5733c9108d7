"""A real `grpc.aio` server and `grpc.aio` clients in one event loop (pytest-asyncio)."""

from __future__ import annotations

import asyncio

import grpc
from narset_testing import attach_request

from narset.server import NarsetServer
from narset.server.settings import ServerSettings
from narset.v1 import job_pb2, operator_service_pb2_grpc, telemetry_pb2, worker_service_pb2, worker_service_pb2_grpc
from narset.v1 import operator_service_pb2 as pb


async def _next_of_kind(stream, kind: int) -> job_pb2.Event:
    async for response in stream:
        if response.event.kind == kind:
            return response.event
    raise AssertionError(f"stream ended before a {job_pb2.EventKind.Name(kind)} event")


async def test_a_reported_safety_event_reaches_watchers_live(tmp_path):
    """A report carrying a safety event is accepted and its SAFETY_EVENT, with the flag's kind, reaches a watcher."""
    async with (
        NarsetServer(ServerSettings(address="127.0.0.1:0", db_path=tmp_path / "narset.db", grace_s=1.0)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
        attached = await worker.Attach(attach_request("run-7"))
        stream = operator.WatchEvents(pb.WatchEventsRequest(job_id="run-7", follow=True))
        await _next_of_kind(stream, job_pb2.EVENT_KIND_JOB_ATTACHED)
        spike = telemetry_pb2.SafetyEvent(scaffold_id="s-1", kind="loss_spike", step=41, detail="loss 9.1 > 3.2")
        await worker.ReportBoundary(
            worker_service_pb2.ReportBoundaryRequest(
                job_id="run-7", session_id=attached.session_id, boundary=1, step=41, safety_events=[spike]
            )
        )
        event = await asyncio.wait_for(_next_of_kind(stream, job_pb2.EVENT_KIND_SAFETY_EVENT), timeout=10)
        stream.cancel()
    assert dict(event.attributes) == {"scaffold_id": "s-1", "kind": "loss_spike"}
    assert event.message == "loss_spike on scaffold s-1 at step 41: loss 9.1 > 3.2"


async def test_graceful_stop_ends_a_follow_stream_and_serves_no_more(tmp_path):
    """`stop()` ends an open follow-mode watch stream cleanly; a later call finds no server."""
    server = NarsetServer(ServerSettings(address="127.0.0.1:0", db_path=tmp_path / "narset.db", grace_s=1.0))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
        stream = operator.WatchEvents(pb.WatchEventsRequest(follow=True))
        reader = asyncio.create_task(_next_of_kind(stream, job_pb2.EVENT_KIND_JOB_ATTACHED))
        await server.stop(0.5)
        done = await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), timeout=10)
        assert isinstance(done[0], AssertionError | grpc.aio.AioRpcError), done
        try:
            await operator.ListJobs(pb.ListJobsRequest(), timeout=2)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("a stopped server answered")
    await server.stop()  # safe twice
