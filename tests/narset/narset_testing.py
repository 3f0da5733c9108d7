"""Helpers for Narset tests: a server in a background thread, a job's registration, a reporting job."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import urllib.request
from contextlib import closing
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from narset.server import NarsetServer
from narset.server.settings import ServerSettings
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = [
    "MODULES",
    "PASSING",
    "REGIONS",
    "Job",
    "Samples",
    "ServerThread",
    "assert_refusal",
    "attach_request",
    "deploy",
    "deployed",
    "gates",
    "linear",
    "live",
    "scrape",
    "stored_blueprints",
    "value",
]


class ServerThread:
    """A NarsetServer running on its own event loop in a daemon thread."""

    def __init__(self, db_path: Path | str, **settings: object) -> None:
        self.settings = ServerSettings(address="127.0.0.1:0", db_path=db_path, grace_s=1.0, **settings)
        self.server = NarsetServer(self.settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=30)
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        """Graceful stop; safe twice (a test may stop the fixture's server before its teardown does)."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(0.5), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


Samples = dict[tuple[str, frozenset], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics, keyed by (sample name, its labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def linear(name: str, fan_in: int, fan_out: int, type_name: str = "Linear") -> job_pb2.ModuleInfo:
    weight_shape = [fan_out, fan_in] if type_name == "Linear" else [fan_in, fan_out]
    return job_pb2.ModuleInfo(
        name=name,
        type=type_name,
        in_features=fan_in,
        out_features=fan_out,
        parameters=[
            job_pb2.ParameterInfo(name="weight", shape=weight_shape, dtype="float32"),
            job_pb2.ParameterInfo(name="bias", shape=[fan_out], dtype="float32"),
        ],
    )


MODULES = [
    linear("encoder.fc1", 16, 32),
    linear("encoder.fc2", 32, 32),
    linear("decoder.fc1", 32, 32),
    linear("decoder.fc2", 32, 8),
    linear("decoder.proj", 8, 8),
    linear("h.0.attn.c_attn", 8, 24, "Conv1D"),
    job_pb2.ModuleInfo(name="encoder.act", type="ReLU"),
    job_pb2.ModuleInfo(name="moe", type="TopKMoE", in_features=8, out_features=8, traits=["moe"]),
    linear("head", 8, 4),
    job_pb2.ModuleInfo(
        name="decoder.no_bias",
        type="Linear",
        in_features=8,
        out_features=8,
        parameters=[job_pb2.ParameterInfo(name="weight", shape=[8, 8], dtype="float32")],
    ),
]
REGIONS = [
    job_pb2.Region(name="encoder", patterns=["encoder.*"]),
    job_pb2.Region(name="decoder", patterns=["decoder.*"]),
    job_pb2.Region(name="head", patterns=["head"], protected=True),
]


def attach_request(job_id: str = "run-7", **fields: object) -> worker_service_pb2.AttachRequest:
    request = worker_service_pb2.AttachRequest(
        job_id=job_id,
        world_size=1,
        ranks=[job_pb2.RankInfo(rank=0, hostname="localhost", pid=1, device="cpu")],
        modules=MODULES,
        regions=REGIONS,
        capabilities=job_pb2.WorkerCapabilities(protocol_version=1, blueprints=["lora", "dense_delta"]),
    )
    for name, value in fields.items():
        field = getattr(request, name)
        if hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def deploy(
    module: str, blueprint: str = "lora", job: str = "run-7", command_id: str = "", **fields
) -> command_pb2.AdaptationCommand:
    """A deploy command; `params` fills blueprint_params, `policy` is copied, other fields are set."""
    command = command_pb2.AdaptationCommand(job_id=job, command_id=command_id)
    command.deploy.module = module
    command.deploy.blueprint = blueprint
    for name, value in fields.items():
        if name == "params":
            command.deploy.blueprint_params.update(value)
        elif name == "policy":
            command.deploy.policy.CopyFrom(value)
        else:
            setattr(command.deploy, name, value)
    return command


def assert_refusal(
    error: grpc.RpcError, code: grpc.StatusCode, reason: str, field: str
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """`error` is a Narset refusal of `field` for `reason`: the status code, the "field: ..." message, the
    ErrorInfo, and a BadRequest whose first violation is `field`. Returns every violation."""
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    [info_detail, bad_request_detail] = rpc_status.from_call(error).details
    assert info_detail.Unpack(info) and bad_request_detail.Unpack(bad_request)
    assert error.code() == code, error.details()
    assert (info.reason, info.domain, dict(info.metadata)) == (reason, "narset", {"field": field})
    first = bad_request.field_violations[0]
    assert first.field == field
    assert error.details().startswith(f"{field}: {first.description}"), error.details()
    return list(bad_request.field_violations)


PASSING = telemetry_pb2.GateTelemetry(
    transfer_rel_delta=0.001,
    foldability=0.99,
    jitter_p95=0.01,
    drift=0.01,
    diversity=0.9,
    step_time_ratio=1.02,
    memory_fraction=0.3,
)


def gates(**changes) -> telemetry_pb2.GateTelemetry:
    telemetry = telemetry_pb2.GateTelemetry()
    telemetry.CopyFrom(PASSING)
    for name, value in changes.items():
        if value is None:
            telemetry.ClearField(name)
        else:
            setattr(telemetry, name, value)
    return telemetry


class Job:
    """A job's rank 0 as Narset sees it: attach, then one report per boundary."""

    def __init__(self, stub, client, job_id: str = "run-7") -> None:
        self.stub, self.client, self.job_id = stub, client, job_id
        self.session = stub.Attach(attach_request(job_id)).session_id
        self.boundary = 0
        self.results: list[telemetry_pb2.CommandResult] = []

    def report(self, probe_loss: float, scaffolds=(), **fields) -> worker_service_pb2.ReportBoundaryResponse:
        """Report the next boundary; every interval took 2 ms a step unless `step_time_ms` says otherwise."""
        self.boundary += 1
        fields.setdefault("step_time_ms", 2.0)
        response = self.stub.ReportBoundary(
            worker_service_pb2.ReportBoundaryRequest(
                job_id=self.job_id,
                session_id=self.session,
                boundary=self.boundary,
                step=10 * self.boundary,
                probe_loss=probe_loss,
                scaffolds=list(scaffolds),
                results=self.results,
                **fields,
            )
        )
        # The job applies whatever arrives; its results go out with the next report.
        self.results = [
            telemetry_pb2.CommandResult(
                command_id=c.command_id, outcome=telemetry_pb2.COMMAND_OUTCOME_APPLIED, boundary=self.boundary
            )
            for c in response.commands
        ]
        return response

    def deploy(self, module: str = "encoder.fc1", command_id: str = "sc", **fields) -> None:
        self.client.submit(deploy(module, job=self.job_id, command_id=command_id, **fields))


def live(stage, telemetry=PASSING, age: int = 3, ttl: int = 12, extensions: int = 0, scaffold_id: str = "sc"):
    return telemetry_pb2.ScaffoldReport(
        scaffold_id=scaffold_id,
        module="encoder.fc1",
        stage=stage,
        alpha=0.5,
        age_ckpts=age,
        ttl_ckpts=ttl,
        extensions=extensions,
        gates=telemetry,
    )


def deployed(job: Job, losses=(1.0, 0.95, 0.9)) -> None:
    """Report a falling pre-deploy history, deploy at its last boundary, report the scaffold applied."""
    for loss in losses[:-1]:
        job.report(loss)
    job.deploy()
    assert [c.command_id for c in job.report(losses[-1]).commands] == ["sc"]


def stored_blueprints(db_path: Path, name: str) -> list[str]:
    """The stored names of every blueprint called `name`, whoever registered it (read from the file)."""
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return [n for (n,) in db.execute("SELECT name FROM blueprints") if n.rpartition("\x1f")[2] == name]
