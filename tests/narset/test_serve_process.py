"""`narset serve` as a process: durability across kill -9, health, graceful SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from narset_testing import attach_request, deploy

from narset.client import NarsetClient
from narset.server.launch import ServeProcess
from narset.v1 import command_pb2, job_pb2, worker_service_pb2, worker_service_pb2_grpc


def test_acknowledged_command_survives_kill_9(tmp_path):
    """After kill -9 and a restart on the same database, the job, the command and its state are all there."""
    db = tmp_path / "narset.db"
    first = ServeProcess(db)
    try:
        with grpc.insecure_channel(first.address) as channel:
            attached = worker_service_pb2_grpc.WorkerServiceStub(channel).Attach(attach_request("run-7"))
            with NarsetClient(first.address) as client:
                client.submit(deploy("encoder.fc1", command_id="dep-1"))
                worker_service_pb2_grpc.WorkerServiceStub(channel).ReportBoundary(
                    worker_service_pb2.ReportBoundaryRequest(
                        job_id="run-7", session_id=attached.session_id, boundary=1, step=10
                    )
                )
                before = client.list_commands("run-7")
    finally:
        first.kill()
    assert first.process.returncode == -9
    second = ServeProcess(db)
    try:
        with NarsetClient(second.address) as client:
            [job] = client.list_jobs()
            assert (job.job_id, job.last_boundary) == ("run-7", 1)
            assert client.list_commands("run-7") == before
            assert before[0].state == command_pb2.COMMAND_STATE_DELIVERED
            assert [m.name for m in client.list_modules("run-7")][:2] == ["encoder.fc1", "encoder.fc2"]
    finally:
        assert second.terminate() == 0


def test_health_serving_then_sigterm_exits_zero_within_grace(tmp_path):
    """Health says SERVING while up; SIGTERM ends the process with code 0 inside the grace period."""
    server = ServeProcess(tmp_path / "narset.db", grace_s=3.0)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "narset.v1.WorkerService", "narset.v1.OperatorService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        # A following watch stream is open during shutdown: it must not hold the server past its grace.
        with NarsetClient(server.address) as client:
            channel_ready = grpc.insecure_channel(server.address)
            worker_service_pb2_grpc.WorkerServiceStub(channel_ready).Attach(attach_request("run-7"))
            stream = client.watch("run-7", follow=True)
            assert next(stream).kind == job_pb2.EVENT_KIND_JOB_ATTACHED
            started = time.monotonic()
            assert server.terminate() == 0
            assert time.monotonic() - started < 3.0 + 2.0
            channel_ready.close()


def test_cli_watch_prints_submitted_command(tmp_path):
    """`narset watch JOB` (a process) prints the COMMAND_SUBMITTED event of a deploy submitted meanwhile."""
    server = ServeProcess(tmp_path / "narset.db")
    try:
        with grpc.insecure_channel(server.address) as channel:
            worker_service_pb2_grpc.WorkerServiceStub(channel).Attach(attach_request("run-7"))
        watch = subprocess.Popen(
            [sys.executable, "-m", "narset", "watch", "run-7", "--server", server.address],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert "JOB_ATTACHED" in watch.stdout.readline()  # the stream is live before we submit
            deploy = subprocess.run(
                [sys.executable, "-m", "narset", "deploy", "run-7", "--module", "encoder.fc1", "--blueprint", "lora"]
                + ["--id", "dep-1", "--server", server.address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert deploy.returncode == 0, deploy.stderr
            line = watch.stdout.readline()
            assert "COMMAND_SUBMITTED" in line and "deploy dep-1" in line
        finally:
            watch.kill()
            watch.wait()
    finally:
        assert server.terminate() == 0


def test_reflection_lists_the_services(tmp_path):
    """Server reflection advertises the worker, operator and health services."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    server = ServeProcess(tmp_path / "narset.db")
    try:
        with grpc.insecure_channel(server.address) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {"narset.v1.WorkerService", "narset.v1.OperatorService", "grpc.health.v1.Health"} <= services
    finally:
        assert server.terminate() == 0
