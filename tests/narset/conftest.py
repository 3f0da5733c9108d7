"""Fixtures: a real Narset server on a loopback port (in a background thread, so that blocking
clients and the in-process CLI can talk to it), a client and a worker stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from narset_testing import Job, ServerThread, attach_request

from narset.client import NarsetClient
from narset.server.logs import configure_logging
from narset.v1 import operator_service_pb2_grpc, worker_service_pb2, worker_service_pb2_grpc

# Server logs go to stderr, as in `narset serve`, so stdout holds only what the CLI prints.
configure_logging("info", "console")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "narset.db"


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerThread]:
    running = ServerThread(db_path).start()
    yield running
    running.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[NarsetClient]:
    with NarsetClient(server.address, timeout_s=10) as narset:
        yield narset


@pytest.fixture
def worker_stub(server: ServerThread) -> Iterator[worker_service_pb2_grpc.WorkerServiceStub]:
    channel = grpc.insecure_channel(server.address)
    yield worker_service_pb2_grpc.WorkerServiceStub(channel)
    channel.close()


@pytest.fixture
def operator_stub(server: ServerThread) -> Iterator[operator_service_pb2_grpc.OperatorServiceStub]:
    """The raw operator stub, for what the client does not surface (a refusal's full status details)."""
    channel = grpc.insecure_channel(server.address)
    yield operator_service_pb2_grpc.OperatorServiceStub(channel)
    channel.close()


@pytest.fixture
def attached(worker_stub: worker_service_pb2_grpc.WorkerServiceStub) -> worker_service_pb2.AttachResponse:
    """Job run-7 attached with the standard registration."""
    return worker_stub.Attach(attach_request("run-7"))


@pytest.fixture
def job(worker_stub: worker_service_pb2_grpc.WorkerServiceStub, client: NarsetClient) -> Job:
    """Job run-7 attached, reporting one boundary per `job.report`."""
    return Job(worker_stub, client)
