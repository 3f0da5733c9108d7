"""The Prometheus endpoint: a scripted session on a real server, then a real scrape of /metrics."""

from __future__ import annotations

import asyncio
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from narset_testing import Job, Samples, ServerThread, deployed, live, scrape, value

from narset.cli.main import build_parser
from narset.client import NarsetClient, NarsetError
from narset.server.app import InsecureBindError, NarsetServer
from narset.server.settings import ServerSettings, exposure_error, load_settings
from narset.v1 import telemetry_pb2, worker_service_pb2_grpc

S = telemetry_pb2


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


@pytest.fixture
def metered(db_path: Path) -> Iterator[ServerThread]:
    running = ServerThread(db_path, metrics_address="127.0.0.1:0").start()
    yield running
    running.stop()


@pytest.fixture
def session(metered: ServerThread) -> Iterator[Job]:
    with NarsetClient(metered.address, timeout_s=10) as client, grpc.insecure_channel(metered.address) as channel:
        yield Job(worker_service_pb2_grpc.WorkerServiceStub(channel), client)


def test_scrape_after_a_session_counts_everything(metered, session):
    """Attach, deploy, boundaries until the scaffold is live, a gates fold, one refusal: each family has its figures."""
    deployed(session)  # three reports, the deploy delivered at the third
    session.report(0.8, [live(S.SCAFFOLD_STAGE_HOLD, age=1)])
    while_live = scrape(metered.server.metrics_port)
    assert value(while_live, "narset_scaffolds_live") == 1
    assert value(while_live, "narset_commands", state="applied", kind="deploy") == 1

    [decision] = session.report(0.7, [live(S.SCAFFOLD_STAGE_EVALUATING, age=2)]).decisions
    assert decision.outcome == S.DECISION_OUTCOME_FUSE
    session.report(0.7, [live(S.SCAFFOLD_STAGE_FUSED, age=3)])  # the fold applied
    with pytest.raises(NarsetError):
        session.deploy("no.such.module", command_id="missing")
    samples = scrape(metered.server.metrics_port)

    assert value(samples, "narset_jobs", state="attached") == 1
    assert value(samples, "narset_attached_workers") == 1
    assert value(samples, "narset_commands", state="applied", kind="deploy") == 1
    assert value(samples, "narset_commands", state="applied", kind="fold") == 1
    assert value(samples, "narset_scaffolds_live") == 0
    assert value(samples, "narset_decisions_total", outcome="fuse", source="gates") == 1
    assert total(samples, "narset_decisions_total") == 1
    assert total(samples, "narset_gate_verdicts_total", result="pass") == len(decision.verdicts) > 0
    assert total(samples, "narset_gate_verdicts_total", result="fail") == 0
    assert value(samples, "narset_gate_verdicts_total", gate="G1", result="pass") == 1

    assert value(samples, "narset_rpcs_total", method="Attach", code="OK") == 1
    assert value(samples, "narset_rpcs_total", method="ReportBoundary", code="OK") == 6
    assert value(samples, "narset_rpcs_total", method="SubmitCommand", code="OK") == 1
    assert value(samples, "narset_rpcs_total", method="SubmitCommand", code="NOT_FOUND") == 1
    assert value(samples, "narset_rpc_seconds_count", method="ReportBoundary") == 6
    assert value(samples, "narset_refusals_total", reason="MODULE_NOT_FOUND") == 1
    assert total(samples, "narset_refusals_total") == 1
    assert value(samples, "narset_exchange_seconds_count", operation="attach") == 1
    assert value(samples, "narset_exchange_seconds_count", operation="report") == 6
    assert value(samples, "narset_exchange_seconds_bucket", operation="report", le="+Inf") == 6
    # One commit per mutating call (attach, six reports, the submit) and one for the refusal's audit entry.
    assert value(samples, "narset_store_commit_seconds_count") == 1 + 6 + 1 + 1
    assert value(samples, "narset_store_commit_seconds_sum") > 0


def test_job_labels_only_when_configured(db_path):
    """With metrics_job_labels the store's counts carry the job id; without, no series names a job."""
    running = ServerThread(db_path, metrics_address="127.0.0.1:0", metrics_job_labels=True).start()
    try:
        with NarsetClient(running.address, timeout_s=10) as client, grpc.insecure_channel(running.address) as channel:
            Job(worker_service_pb2_grpc.WorkerServiceStub(channel), client).report(1.0)
        samples = scrape(running.server.metrics_port)
    finally:
        running.stop()
    assert value(samples, "narset_jobs", job="run-7", state="attached") == 1
    assert value(samples, "narset_attached_workers", job="run-7") == 1
    assert all(dict(labels).get("job") in (None, "run-7") for _, labels in samples)


def test_no_endpoint_by_default_and_none_after_stop(db_path):
    """Metrics are off unless asked for; a stopped server's endpoint no longer answers."""
    running = ServerThread(db_path).start()
    assert running.server.metrics_port is None
    running.stop()
    metered = ServerThread(db_path, metrics_address="127.0.0.1:0").start()
    port = metered.server.metrics_port
    assert value(scrape(port), "narset_scaffolds_live") == 0
    metered.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_metrics_beyond_loopback_need_insecure(db_path):
    """The endpoint is plain HTTP without tokens: beyond loopback only when the operator says insecure."""
    exposed = ServerSettings(db_path=db_path, metrics_address="0.0.0.0:9464")
    assert "refusing to serve metrics on 0.0.0.0:9464" in exposure_error(exposed)
    with pytest.raises(InsecureBindError):
        asyncio.run(NarsetServer(exposed).start())
    assert exposure_error(ServerSettings(db_path=db_path, metrics_address="0.0.0.0:9464", insecure=True)) is None
    with pytest.raises(ValueError, match="host:port"):
        ServerSettings(db_path=db_path, metrics_address="9464")


def test_metrics_address_from_flag_and_environment(monkeypatch):
    """`narset serve --metrics-address` and NARSET_METRICS_ADDRESS set it; unset, there is no endpoint."""
    args = build_parser().parse_args(["serve", "--metrics-address", "127.0.0.1:9464", "--metrics-job-labels"])
    assert (args.metrics_address, args.metrics_job_labels) == ("127.0.0.1:9464", True)
    assert load_settings().metrics_address is None
    monkeypatch.setenv("NARSET_METRICS_ADDRESS", "[::1]:9464")
    assert load_settings().metrics_address == "[::1]:9464"
