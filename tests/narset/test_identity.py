"""Identity against real servers: bearer tokens with roles and job patterns, per-job worker credentials,
TLS and mutual TLS with a throwaway CA, secure-by-default binding, and the append-only audit log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from narset_testing import ServerThread, assert_refusal, attach_request, deploy
from tls_testing import Pki, throwaway_pki

from kasmina_worker.link.narset_transport import NarsetTransport
from narset.cli import main
from narset.client import NarsetClient, NarsetError
from narset.contract import reasons
from narset.contract.connection import Connection
from narset.control.credentials import digest
from narset.server import NarsetServer
from narset.server.app import InsecureBindError
from narset.server.guard import SERVICES
from narset.server.identity import Authority
from narset.server.settings import ServerSettings, TokenSetting, exposure_error, load_settings
from narset.store import Store
from narset.v1 import (
    operator_service_pb2,
    operator_service_pb2_grpc,
    telemetry_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

S = telemetry_pb2
UNAUTHENTICATED, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
# name: (role, job patterns); each token is "<name>-token".
PEOPLE = {
    "root": ("admin", ("*",)),
    "alice": ("operator", ("run-*",)),
    "bob": ("operator", ("other-*",)),
    "val": ("viewer", ("*",)),
    "launcher": ("worker", ("run-*",)),
}
STALE_SESSION_S = 2.0
METHODS = [f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods]


def token(name: str) -> str:
    return f"{name}-token"


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(name)}"),)


TOKENS = tuple(
    TokenSetting(name=name, role=role, sha256=digest(token(name)), jobs=jobs) for name, (role, jobs) in PEOPLE.items()
)


@pytest.fixture
def secured(db_path) -> Iterator[ServerThread]:
    running = ServerThread(db_path, tokens=TOKENS, stale_session_s=STALE_SESSION_S).start()
    yield running
    running.stop()


@pytest.fixture
def channel(secured) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured.address) as opened:
        yield opened


@pytest.fixture
def worker(channel) -> worker_service_pb2_grpc.WorkerServiceStub:
    return worker_service_pb2_grpc.WorkerServiceStub(channel)


@pytest.fixture
def operator(channel) -> operator_service_pb2_grpc.OperatorServiceStub:
    return operator_service_pb2_grpc.OperatorServiceStub(channel)


def client_of(server: ServerThread, name: str) -> NarsetClient:
    return NarsetClient(server.address, timeout_s=10, connection=Connection(token=token(name)))


def refused(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=10, **kwargs)
    return error.value


def report(job_id: str, session_id: str, boundary: int, *scaffolds) -> worker_service_pb2.ReportBoundaryRequest:
    return worker_service_pb2.ReportBoundaryRequest(
        job_id=job_id, session_id=session_id, boundary=boundary, step=boundary, scaffolds=scaffolds
    )


# tokens and roles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.rpartition("/")[2])
def test_every_rpc_without_a_token_or_with_an_unknown_one_is_unauthenticated(channel, method):
    """Identity comes first: no token, or one Narset does not know, is UNAUTHENTICATED on every method."""
    streaming = method.endswith("/WatchEvents")
    call = (channel.unary_stream if streaming else channel.unary_unary)(method)

    def invoke(**kwargs):
        return list(call(b"", timeout=10, **kwargs)) if streaming else call(b"", timeout=10, **kwargs)

    with pytest.raises(grpc.RpcError) as missing:
        invoke()
    assert_refusal(missing.value, UNAUTHENTICATED, reasons.TOKEN_MISSING, "authorization")
    with pytest.raises(grpc.RpcError) as unknown:
        invoke(metadata=(("authorization", "Bearer stolen-or-guessed"),))
    assert_refusal(unknown.value, UNAUTHENTICATED, reasons.TOKEN_INVALID, "authorization")


def test_a_viewer_reads_but_cannot_write(secured, worker, operator):
    worker.Attach(attach_request("run-7"), metadata=bearer("launcher"))
    with client_of(secured, "val") as viewer:
        assert [j.job_id for j in viewer.list_jobs()] == ["run-7"]
        assert viewer.get_job("run-7").job.job_id == "run-7"
        assert [e.kind for e in viewer.watch("run-7", follow=False)]
    writes = [
        (operator.SubmitCommand, operator_service_pb2.SubmitCommandRequest(command=deploy("encoder.fc1"))),
        (operator.SetPolicy, operator_service_pb2.SetPolicyRequest(job_id="run-7")),
        (operator.ListAudit, operator_service_pb2.ListAuditRequest()),
        (worker.Attach, attach_request("run-7")),
    ]
    for call, request in writes:
        error = refused(call, request, metadata=bearer("val"))
        assert_refusal(error, DENIED, reasons.ROLE_FORBIDS, "authorization")
    with client_of(secured, "root") as admin:
        assert admin.list_commands("run-7") == []


def test_an_operator_acts_only_on_the_jobs_its_patterns_cover(secured, worker, operator):
    worker.Attach(attach_request("run-7"), metadata=bearer("root"))
    worker.Attach(attach_request("other-1"), metadata=bearer("root"))
    with client_of(secured, "bob") as bob:
        assert [j.job_id for j in bob.list_jobs()] == ["other-1"]
        with pytest.raises(NarsetError) as error:
            bob.submit(deploy("encoder.fc1", job="run-7"))
        assert (error.value.code, error.value.reason, error.value.field) == (
            DENIED,
            reasons.JOB_OUT_OF_SCOPE,
            "command.job_id",
        )
        for attempt in (lambda: bob.get_job("run-7"), lambda: list(bob.watch(follow=False))):
            with pytest.raises(NarsetError) as error:
                attempt()
            assert (error.value.code, error.value.reason, error.value.field) == (
                DENIED,
                reasons.JOB_OUT_OF_SCOPE,
                "job_id",
            )
        assert bob.submit(deploy("encoder.fc1", job="other-1")).record.command.issued_by == "bob"


def test_issued_by_is_the_callers_identity_and_narset_principals_are_reserved(secured, worker, operator):
    """The text a client sends is audited, never the issuer; `narset:` (and policy:, kasmina:) are refused."""
    worker.Attach(attach_request("run-7"), metadata=bearer("launcher"))
    claimed = deploy("encoder.fc1", command_id="dep-1")
    claimed.issued_by = "mallory"
    record = operator.SubmitCommand(
        operator_service_pb2.SubmitCommandRequest(command=claimed), metadata=bearer("alice")
    ).record
    assert record.command.issued_by == "alice"
    for reserved in ("narset:gates", "policy:tactical", "kasmina:breaker"):
        command = deploy("encoder.fc2")
        command.issued_by = reserved
        request = operator_service_pb2.SubmitCommandRequest(command=command)
        error = refused(operator.SubmitCommand, request, metadata=bearer("root"))
        assert_refusal(error, DENIED, reasons.RESERVED_ISSUER, "command.issued_by")
    with client_of(secured, "root") as admin:
        [submitted] = [e for e in admin.list_audit("run-7") if e.method == "SubmitCommand" and e.outcome == "OK"]
    assert (submitted.principal, submitted.command_id) == ("alice", "dep-1")
    assert submitted.detail == "claimed issued_by 'mallory'"


# worker credentials -------------------------------------------------------------------------------------


def test_a_worker_credential_acts_only_for_its_own_job(secured, worker):
    """Job A's credential on job B's report or detach is PERMISSION_DENIED, and B is untouched."""
    first = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    worker.Attach(attach_request("run-8"), metadata=bearer("launcher"))
    error = refused(worker.ReportBoundary, report("run-8", first, 1), metadata=bearer("launcher"))
    assert_refusal(error, DENIED, reasons.SESSION_OF_ANOTHER_JOB, "report.session_id")
    detach = worker_service_pb2.DetachRequest(job_id="run-8", session_id=first)
    error = refused(worker.Detach, detach, metadata=bearer("launcher"))
    assert_refusal(error, DENIED, reasons.SESSION_OF_ANOTHER_JOB, "detach.session_id")
    error = refused(worker.ReportBoundary, report("run-7", first, 1))
    assert_refusal(error, UNAUTHENTICATED, reasons.TOKEN_MISSING, "authorization")
    worker.ReportBoundary(report("run-7", first, 1), metadata=bearer("launcher"))
    with client_of(secured, "root") as admin:
        job = admin.get_job("run-8").job
        assert (job.last_boundary, job.state) == (0, 1)
        assert admin.get_job("run-7").job.last_boundary == 1


def test_no_read_returns_a_credential_and_the_store_keeps_only_its_digest(secured, worker, operator, db_path):
    credential = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    worker.ReportBoundary(report("run-7", credential, 1), metadata=bearer("launcher"))
    reads = [
        (operator.ListJobs, operator_service_pb2.ListJobsRequest()),
        (operator.GetJob, operator_service_pb2.GetJobRequest(job_id="run-7")),
        (operator.ListModules, operator_service_pb2.ListModulesRequest(job_id="run-7")),
        (operator.ListScaffolds, operator_service_pb2.ListScaffoldsRequest(job_id="run-7", include_ended=True)),
        (operator.ListCommands, operator_service_pb2.ListCommandsRequest(job_id="run-7")),
        (operator.ListDecisions, operator_service_pb2.ListDecisionsRequest(job_id="run-7")),
        (operator.GetPolicy, operator_service_pb2.GetPolicyRequest(job_id="run-7")),
        (operator.ListAudit, operator_service_pb2.ListAuditRequest()),
    ]
    answers = [call(request, metadata=bearer("root")).SerializeToString() for call, request in reads]
    events = operator.WatchEvents(operator_service_pb2.WatchEventsRequest(follow=False), metadata=bearer("root"))
    answers.extend(response.SerializeToString() for response in events)
    assert all(credential.encode() not in answer for answer in answers)
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT session_id FROM jobs").fetchall() == [(digest(credential),)]
    stored = b"".join(p.read_bytes() for p in db_path.parent.glob(f"{db_path.name}*"))
    assert credential.encode() not in stored


def test_taking_over_an_attached_job_needs_its_credential_an_operator_or_a_stale_session(secured, worker):
    first = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    error = refused(worker.Attach, attach_request("run-7"), metadata=bearer("launcher"))
    assert_refusal(error, DENIED, reasons.JOB_ATTACHED, "attach.session_id")
    worker.ReportBoundary(report("run-7", first, 1), metadata=bearer("launcher"))  # still the job's session
    again = worker.Attach(attach_request("run-7", session_id=first), metadata=bearer("launcher")).session_id
    error = refused(worker.Attach, attach_request("run-7"), metadata=bearer("bob"))
    assert_refusal(error, DENIED, reasons.JOB_OUT_OF_SCOPE, "attach.job_id")
    moved = worker.Attach(attach_request("run-7"), metadata=bearer("alice")).session_id
    error = refused(worker.ReportBoundary, report("run-7", again, 2), metadata=bearer("launcher"))
    assert_refusal(error, grpc.StatusCode.FAILED_PRECONDITION, reasons.SESSION_SUPERSEDED, "report.session_id")
    # A job restarted after a crash holds its worker token but not its credential: once the session
    # has been silent for stale_session_s, the token takes the job back.
    time.sleep(STALE_SESSION_S + 0.2)
    restarted = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    detach = worker_service_pb2.DetachRequest(job_id="run-7", session_id=restarted)
    worker.Detach(detach, metadata=bearer("launcher"))
    assert worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id not in (first, moved)


def test_the_worker_link_sends_its_token_and_never_imports_grpc_in_the_job(secured):
    """`NarsetTransport(token=...)` (what KasminaWorker(narset_token=...) passes) attaches and reports."""
    transport = NarsetTransport(secured.address, lambda: attach_request("run-7"), timeout_s=5, token=token("launcher"))
    anonymous = NarsetTransport(secured.address, lambda: attach_request("run-8"), timeout_s=5)
    try:
        transport.exchange(worker_service_pb2.ReportBoundaryRequest(job_id="run-7", boundary=1, step=1))
        assert transport.last_error is None
        assert anonymous.exchange(worker_service_pb2.ReportBoundaryRequest(job_id="run-8", boundary=1)) == []
        assert (anonymous.last_error.code, anonymous.last_error.reason) == ("UNAUTHENTICATED", reasons.TOKEN_MISSING)
    finally:
        transport.close()
        anonymous.close()
    with client_of(secured, "root") as admin:
        assert [(j.job_id, j.last_boundary, j.state) for j in admin.list_jobs()] == [("run-7", 1, 2)]
    probe = "import sys, kasmina_worker.link.narset_transport; assert 'grpc' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


# TLS and binding ----------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path) -> Pki:
    return throwaway_pki(tmp_path)


def test_tls_and_mutual_tls_with_a_throwaway_ca(pki, tmp_path, monkeypatch, capsys):
    tls = ServerThread(tmp_path / "tls.db", tls_cert=pki.server_cert, tls_key=pki.server_key).start()
    mutual = ServerThread(
        tmp_path / "mtls.db", tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca
    ).start()
    try:
        with NarsetClient(tls.address, timeout_s=5, connection=Connection(tls_ca=pki.ca)) as trusted:
            assert trusted.list_jobs() == []
        shown = Connection(tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
        with NarsetClient(mutual.address, timeout_s=5, connection=shown) as client:
            assert client.list_jobs() == []
        for server, connection in (
            (tls, Connection()),  # plain text to a TLS port
            (mutual, Connection(tls_ca=pki.ca)),  # no client certificate
            (mutual, Connection(tls_ca=pki.ca, tls_cert=pki.stranger_cert, tls_key=pki.stranger_key)),
        ):
            with NarsetClient(server.address, timeout_s=3, connection=connection) as client:
                with pytest.raises(NarsetError) as error:
                    client.list_jobs()
                assert error.value.code == grpc.StatusCode.UNAVAILABLE
        flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        assert main(["jobs", "--server", mutual.address, "--json", *flags]) == 0
        assert json.loads(capsys.readouterr().out) == {"jobs": []}
        # The worker's link takes its TLS files from the environment, as the CLI does.
        monkeypatch.setenv("NARSET_TLS_CA", str(pki.ca))
        monkeypatch.setenv("NARSET_TLS_CERT", str(pki.client_cert))
        monkeypatch.setenv("NARSET_TLS_KEY", str(pki.client_key))
        transport = NarsetTransport(mutual.address, lambda: attach_request("run-7"), timeout_s=5)
        try:
            transport.exchange(worker_service_pb2.ReportBoundaryRequest(job_id="run-7", boundary=1, step=1))
            assert transport.last_error is None
        finally:
            transport.close()
    finally:
        tls.stop()
        mutual.stop()


def test_a_public_bind_needs_tls_and_tokens_unless_insecure_is_explicit(tmp_path, pki):
    """Beyond loopback Narset refuses to start without TLS and tokens, and says why; loopback needs neither."""
    public = {"address": "0.0.0.0:0", "db_path": tmp_path / "narset.db"}
    assert "without TLS and tokens" in exposure_error(ServerSettings(**public))
    assert "without TLS:" in exposure_error(ServerSettings(**public, tokens=TOKENS))
    secure = {"tokens": TOKENS, "tls_cert": pki.server_cert, "tls_key": pki.server_key}
    assert exposure_error(ServerSettings(**public, **secure)) is None
    assert exposure_error(ServerSettings(**public, insecure=True)) is None
    assert exposure_error(ServerSettings(address="[::1]:0")) is None
    with pytest.raises(InsecureBindError, match="--insecure"):
        import asyncio

        asyncio.run(NarsetServer(ServerSettings(**public)).start())
    assert not (tmp_path / "narset.db").exists()  # refused before the store is opened
    done = subprocess.run(
        [sys.executable, "-m", "narset", "serve", "--address", "0.0.0.0:0", "--db", str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--insecure" in done.stderr


def test_tokens_come_from_the_settings_file_and_narset_token_makes_them(tmp_path, capsys):
    """`narset token` prints a token and the TOML entry (its SHA-256 only) that makes Narset accept it."""
    assert main(["token", "--name", "ci", "--role", "viewer", "--jobs", "run-*", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    config = tmp_path / "narset.toml"
    config.write_text("[[tokens]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in made["setting"].items()))
    settings = load_settings(config)
    assert made["token"] not in config.read_text()
    principal = Authority(settings.tokens).authenticate((("authorization", f"Bearer {made['token']}"),))
    assert (principal.name, principal.role, principal.jobs) == ("ci", "viewer", ("run-*",))
    for bad in ({"name": "narset:gates"}, {"name": "anonymous"}, {"sha256": "not-a-digest"}):
        with pytest.raises(ValueError):
            TokenSetting(**{**made["setting"], **bad})
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        ServerSettings(tls_cert=tmp_path / "c.pem")


# the audit log ------------------------------------------------------------------------------------------


def test_the_audit_log_records_calls_decisions_and_refusals(secured, worker, operator, capsys, monkeypatch):
    credential = worker.Attach(attach_request("run-7"), metadata=bearer("launcher")).session_id
    with client_of(secured, "alice") as alice:
        alice.submit(deploy("encoder.fc1", command_id="sc"))
        with pytest.raises(NarsetError):
            alice.submit(deploy("no.such.module"))
    worker.ReportBoundary(report("run-7", credential, 1), metadata=bearer("launcher"))
    applied = report("run-7", credential, 2, S.ScaffoldReport(scaffold_id="sc", module="encoder.fc1", stage=4))
    applied.results.add(command_id="sc", outcome=S.COMMAND_OUTCOME_APPLIED, boundary=1)
    worker.ReportBoundary(applied, metadata=bearer("launcher"))
    tripped = S.ScaffoldReport(scaffold_id="sc", module="encoder.fc1", stage=4, gates=S.GateTelemetry(non_finite=True))
    worker.ReportBoundary(report("run-7", credential, 3, tripped), metadata=bearer("launcher"))
    refused(operator.ListJobs, operator_service_pb2.ListJobsRequest())  # no token

    token_file = secured.settings.db_path.parent / "root.token"
    token_file.write_text(token("root") + "\n")
    assert main(["audit", "--server", secured.address, "--token-file", str(token_file), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    seen = [(e["principal"], e["method"], e["job_id"], e["command_id"], e["outcome"]) for e in entries]
    assert seen == [
        ("launcher", "Attach", "run-7", "", "OK"),
        ("alice", "SubmitCommand", "run-7", "sc", "OK"),
        ("alice", "SubmitCommand", "run-7", "", "NOT_FOUND"),
        ("launcher", "ReportBoundary", "run-7", "", "OK"),
        ("launcher", "ReportBoundary", "run-7", "", "OK"),
        ("launcher", "ReportBoundary", "run-7", "", "OK"),
        ("narset:gates", "Decision", "run-7", "sc.prune.b3", "PRUNE"),
        ("", "ListJobs", "", "", "UNAUTHENTICATED"),
    ]
    assert entries[2]["reason"] == reasons.MODULE_NOT_FOUND and entries[2]["detail"].startswith("deploy.module:")
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") and e["at"] for e in entries)
    monkeypatch.setenv("NARSET_TOKEN", token("root"))
    assert main(["audit", "run-7", "--server", secured.address, "--after", "1", "--limit", "1"]) == 0
    table = capsys.readouterr().out
    assert "alice" in table and "launcher" not in table


def test_the_audit_log_is_append_only(secured, worker, db_path):
    """The store offers only append and list; SQLite triggers refuse an UPDATE or DELETE from anywhere."""
    worker.Attach(attach_request("run-7"), metadata=bearer("launcher"))
    assert {name for name in dir(Store) if "audit" in name} == {"append_audit", "list_audit"}
    with sqlite3.connect(db_path) as db:
        for statement in ("UPDATE audit SET principal = 'someone else'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
        assert db.execute("SELECT principal, method FROM audit").fetchall() == [("launcher", "Attach")]
