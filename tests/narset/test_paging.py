"""ListJobs and ListCommands page through lists longer than one answer: every entry once, in one order,
while the lists change between pages. The server answers at most 16 KiB, so a few entries fill a page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from narset_testing import Job, ServerThread, attach_request, live

from narset.client import NarsetClient
from narset.v1 import command_pb2, operator_service_pb2, operator_service_pb2_grpc, telemetry_pb2, worker_service_pb2
from narset.v1 import worker_service_pb2_grpc as worker_grpc

# Each test runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.backends

LIMIT = 16 * 1024
PENDING = command_pb2.COMMAND_STATE_PENDING


def _serve(db: Path | str) -> Iterator[tuple[ServerThread, grpc.Channel]]:
    running = ServerThread(db, max_message_bytes=LIMIT).start()
    with grpc.insecure_channel(running.address) as channel:
        yield running, channel
    running.stop()


@pytest.fixture
def small(db: Path | str) -> Iterator[tuple[ServerThread, grpc.Channel]]:
    """A server with a 16 KiB message limit, and a channel to it."""
    yield from _serve(db)


def test_list_commands_pages_by_offset_over_a_state_filtered_list(small):
    """Twelve PENDING pauses listed by state a page at a time while the job's reports deliver and apply the
    oldest between pages: each is listed once, in ledger order (an offset into the shrinking list skipped
    the ones that moved up)."""
    server, channel = small
    operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
    with NarsetClient(server.address) as client:
        job = Job(worker_grpc.WorkerServiceStub(channel), client)
        held = [live(telemetry_pb2.SCAFFOLD_STAGE_HOLD)]
        job.report(1.0)
        job.deploy()
        job.report(0.9)
        job.report(0.85, scaffolds=held)
        pauses = [f"pause-{i}" for i in range(12)]
        for command_id in pauses:
            command = command_pb2.AdaptationCommand(job_id="run-7", command_id=command_id, reason="r" * 3000)
            command.pause.scaffold.scaffold_id = "sc"
            client.submit(command)
        request = operator_service_pb2.ListCommandsRequest(job_id="run-7", states=[PENDING])
        listed, moved = [], []
        while True:
            page = operator.ListCommands(request)
            assert page.commands and all(r.state == PENDING for r in page.commands)
            listed += [r.command.command_id for r in page.commands]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
            moved += [c.command_id for c in job.report(0.85, scaffolds=held).commands]
        assert listed == pauses
        assert moved and set(moved) < set(pauses)  # the reports did move commands out of the filter


def _attach_request(job_id: str) -> worker_service_pb2.AttachRequest:
    """A registration of about 4 KB (long host names): three fill a page."""
    request = attach_request(job_id)
    request.ranks[0].hostname = "h" * 4000
    return request


@pytest.fixture
def collated_db(backend: str, db_path: Path, request: pytest.FixtureRequest) -> Iterator[Path | str]:
    """The SQLite file, or a fresh PostgreSQL database whose default collation is English (ICU), as a
    database created on a machine with an English locale has: it sorts "run-a" before "Run-B"."""
    if backend == "sqlite":
        yield db_path
        return
    postgres = request.getfixturevalue("postgres")
    psycopg = pytest.importorskip("psycopg")
    name = "english_collation"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
        admin.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' "
            "LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )
    yield postgres.url(name)
    postgres.drop_database(postgres.url(name))


@pytest.fixture
def small_collated(collated_db: Path | str) -> Iterator[tuple[ServerThread, grpc.Channel]]:
    """A server with a 16 KiB message limit on `collated_db`, and a channel to it."""
    yield from _serve(collated_db)


def test_list_jobs_paging_is_wrong_with_a_non_c_collation(small_collated):
    """Jobs whose ids differ in case and punctuation, paged by ListJobs from a database that sorts text by a
    language's rules: every job once, in byte order (the database's order, compared to the page token in
    Python's, skipped and repeated jobs)."""
    ids = ["run-a", "Run-B", "run-c", "RUN-D", "run_e", "run.F", "Run-g", "run-H", "run9", "Run0"]
    _, channel = small_collated
    worker = worker_grpc.WorkerServiceStub(channel)
    for job_id in ids:
        worker.Attach(_attach_request(job_id))
    operator = operator_service_pb2_grpc.OperatorServiceStub(channel)
    request, listed, pages = operator_service_pb2.ListJobsRequest(), [], 0
    while True:
        page = operator.ListJobs(request)
        listed += [j.job_id for j in page.jobs]
        pages += 1
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert listed == sorted(ids) and pages > 2
