"""One message-size limit for Narset, the worker's link and the CLI/client (issue 12): an answer that would
exceed it is paged, split across boundaries, or refused naming the limit, never sent too large or after a
state change. Most tests run Narset with a 64 KiB limit, so that a few requests reach it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pydantic
import pytest
from narset_testing import Job, ServerThread, assert_refusal, attach_request, live

from narset.cli import main
from narset.client import NarsetClient
from narset.contract import reasons
from narset.contract.limits import MAX_COMMAND_BYTES, MAX_MESSAGE_BYTES, message_size_options
from narset.server.settings import ServerSettings
from narset.v1 import (
    command_pb2,
    job_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    telemetry_pb2,
    worker_service_pb2_grpc,
)

LIMIT = 64 * 1024


@pytest.fixture
def small(db_path: Path) -> Iterator[ServerThread]:
    running = ServerThread(db_path, max_message_bytes=LIMIT).start()
    yield running
    running.stop()


@pytest.fixture
def stubs(small: ServerThread):
    with grpc.insecure_channel(small.address) as channel:
        yield worker_service_pb2_grpc.WorkerServiceStub(channel), operator_service_pb2_grpc.OperatorServiceStub(channel)


def _attach(job_id: str, ranks: int, hostname_chars: int):
    """A registration of `ranks` ranks with long host names (big job records)."""
    request = attach_request(job_id)
    del request.ranks[:]
    request.ranks.extend(
        job_pb2.RankInfo(rank=r, hostname="h" * hostname_chars, pid=r, device="cpu") for r in range(ranks)
    )
    request.world_size = ranks
    return request


def test_the_limit_is_one_and_the_server_cannot_answer_past_it():
    """Server, client and link use the contract's one limit; a server may lower it, not raise it past what
    every client receives (it sent 16 MiB to clients that took 4)."""
    assert ServerSettings().max_message_bytes == MAX_MESSAGE_BYTES
    assert dict(message_size_options()) == {
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    }
    with pytest.raises(pydantic.ValidationError, match="max_message_bytes"):
        ServerSettings(max_message_bytes=MAX_MESSAGE_BYTES + 1)


def test_large_jobs_made_narset_jobs_fail_for_everyone(small, stubs, capsys, monkeypatch):
    """Jobs whose records together pass the limit are listed in pages, each within it; `narset jobs` lists
    them all."""
    worker, operator = stubs
    for i in range(5):
        worker.Attach(_attach(f"run-{i}", 8, 2000))  # ~16 KB a job: five pass the 64 KiB limit together
    first = operator.ListJobs(operator_service_pb2.ListJobsRequest())
    assert first.next_page_token and first.ByteSize() <= LIMIT
    rest = operator.ListJobs(operator_service_pb2.ListJobsRequest(page_token=first.next_page_token))
    listed = [j.job_id for j in (*first.jobs, *rest.jobs)]
    assert listed == [f"run-{i}" for i in range(5)] and not rest.next_page_token
    with NarsetClient(small.address) as client:
        assert [j.job_id for j in client.list_jobs()] == listed
    monkeypatch.setenv("NARSET_SERVER", small.address)
    assert main(["jobs"]) == 0
    printed = capsys.readouterr().out
    assert all(f"run-{i}" in printed for i in range(5))


def _pause(i: int) -> command_pb2.AdaptationCommand:
    command = command_pb2.AdaptationCommand(job_id="run-7", command_id=f"pause-{i}", reason="r" * 4000)
    command.pause.scaffold.scaffold_id = "sc"
    return command


def test_long_commands_made_report_answers_too_big_while_marked_delivered(small, stubs):
    """Twenty 4 KB commands due at once reach the job over three boundaries, in order, each answer within
    the limit; a command not in an answer stays PENDING (they were marked DELIVERED, the answer lost)."""
    worker, operator = stubs
    with NarsetClient(small.address) as client:
        job = Job(worker, client)
        job.report(1.0)
        job.deploy()
        job.report(0.9)
        job.report(0.85, scaffolds=[live(telemetry_pb2.SCAFFOLD_STAGE_HOLD)])
        for i in range(20):
            client.submit(_pause(i))
        delivered: list[str] = []
        for loss in (0.84, 0.83, 0.82):
            answer = job.report(loss, scaffolds=[live(telemetry_pb2.SCAFFOLD_STAGE_HOLD)])
            assert 0 < answer.ByteSize() <= LIMIT
            delivered += [c.command_id for c in answer.commands]
            states = {r.command.command_id: r.state for r in client.list_commands("run-7")}
            assert all(states[c] != command_pb2.COMMAND_STATE_PENDING for c in delivered)
            assert all(
                s == command_pb2.COMMAND_STATE_PENDING
                for c, s in states.items()
                if c.startswith("pause-") and c not in delivered
            )
        assert delivered == [f"pause-{i}" for i in range(20)]
        # The ledger itself is now over the limit: ListCommands pages it.
        first = operator.ListCommands(operator_service_pb2.ListCommandsRequest(job_id="run-7"))
        assert first.next_page_token and first.ByteSize() <= LIMIT
        assert len(client.list_commands("run-7")) == 21


def test_a_command_is_held_to_a_quarter_of_the_limit(small, stubs):
    """A command too large to share a boundary's answer is refused at submit, naming its size."""
    worker, operator = stubs
    worker.Attach(attach_request("run-7"))
    command = command_pb2.AdaptationCommand(job_id="run-7", reason="r" * 4000)
    command.deploy.module, command.deploy.blueprint = "encoder.fc1", "lora"
    command.deploy.policy.teaching.feature.taps.extend(["t" * 4000] * 5)
    with pytest.raises(grpc.RpcError) as error:
        operator.SubmitCommand(operator_service_pb2.SubmitCommandRequest(command=command))
    assert_refusal(error.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_FIELD, "command")
    assert f"at most {min(MAX_COMMAND_BYTES, LIMIT // 4)}" in error.value.details()
    assert not operator.ListCommands(operator_service_pb2.ListCommandsRequest(job_id="run-7")).commands


def test_an_answer_that_cannot_be_paged_is_refused_naming_the_limit(small, stubs):
    """A job registered just under the limit: its GetJob answer (the job and its policy) would pass it, and is
    refused with ANSWER_TOO_LARGE instead of failing in the client."""
    worker, operator = stubs
    request = _attach("run-7", 17, 0)
    del request.modules[:]  # the job record is then the request, with a few fields more
    for rank in request.ranks:  # grow the host names until the request is just under the limit
        rank.hostname = "h" * min(4000, LIMIT - 64 - request.ByteSize())
    assert LIMIT - 128 < request.ByteSize() < LIMIT - 32
    worker.Attach(request)
    with pytest.raises(grpc.RpcError) as error:
        operator.GetJob(operator_service_pb2.GetJobRequest(job_id="run-7"))
    assert_refusal(error.value, grpc.StatusCode.RESOURCE_EXHAUSTED, reasons.ANSWER_TOO_LARGE, "request")
    assert f"over the {LIMIT}-byte message limit" in error.value.details()


def test_the_cli_printed_a_message_over_the_limit_as_refused(server, attached, capsys):
    """gRPC's own RESOURCE_EXHAUSTED (a request over the limit, never sent) is no refusal of Narset: exit 1,
    not 3, and says so; a budget refusal (RESOURCE_EXHAUSTED with a reason) stays a refusal."""
    huge = ["fold", "run-7", "--module", "encoder.fc1", "--reason", "r" * MAX_MESSAGE_BYTES]
    assert main([*huge, "--server", server.address]) == 1
    assert "a message over the size limit" in capsys.readouterr().err
    deploy = ["deploy", "run-7", "--blueprint", "lora", "--server", server.address]
    assert main([*deploy, "--module", "encoder.fc1"]) == 0
    assert main([*deploy, "--module", "encoder.fc2"]) == 3  # the region holds one live scaffold
    assert "refused (RESOURCE_EXHAUSTED): deploy.region" in capsys.readouterr().err
