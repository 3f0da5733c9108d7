"""Fixtures: a real Narset server on a loopback port (in a background thread, so that blocking
clients and the in-process CLI can talk to it), a client and a worker stub.

The server's store is an SQLite file. A module marked `pytest.mark.backends` runs each of its tests
that use the store (through `server` or `db`) twice: on an SQLite file and on a fresh database of a
real PostgreSQL server, started once per session (pg_testing.py). Where no PostgreSQL can be started
those runs skip, saying why, unless NARSET_REQUIRE_POSTGRES=1 (CI sets it), which makes them fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from narset_testing import Job, ServerThread, attach_request
from pg_testing import PostgresServer, PostgresUnavailable

from narset.client import NarsetClient
from narset.server.logs import configure_logging
from narset.v1 import operator_service_pb2_grpc, worker_service_pb2, worker_service_pb2_grpc

# Server logs go to stderr, as in `narset serve`, so stdout holds only what the CLI prints.
configure_logging("info", "console")


BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends: run the test on each store backend (SQLite, PostgreSQL)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of the test: "sqlite" unless its module is marked `backends`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session; skips (fails with NARSET_REQUIRE_POSTGRES=1) without one."""
    try:
        server = PostgresServer()
    except (PostgresUnavailable, ImportError, OSError) as why:
        if os.environ.get("NARSET_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"NARSET_REQUIRE_POSTGRES=1, and no PostgreSQL server could be started: {why}")
        pytest.skip(f"no PostgreSQL server could be started: {why}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema (its own tables), whatever the test's backend."""
    url = postgres.create_schema()
    yield url
    postgres.drop_schema(url)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "narset.db"


@pytest.fixture
def db(backend: str, db_path: Path, request: pytest.FixtureRequest) -> Iterator[Path | str]:
    """Where the test's store is: the SQLite file, or the URL of a fresh PostgreSQL schema (its own tables)."""
    if backend == "sqlite":
        yield db_path
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def server(db: Path | str) -> Iterator[ServerThread]:
    running = ServerThread(db).start()
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
