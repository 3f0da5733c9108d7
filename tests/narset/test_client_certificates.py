"""Mutual TLS as identity (issue 12): a client certificate the client CA signed, whose subject common name
or alternative name is configured, is a principal with its own role and job patterns; a call without a
token and with an unmapped certificate is UNAUTHENTICATED; a token still wins over the certificate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pydantic
import pytest
from narset_testing import ServerThread, assert_refusal, attach_request, deploy
from tls_testing import Pki, throwaway_pki

from narset.client import NarsetClient, NarsetError
from narset.contract import reasons
from narset.contract.connection import Connection
from narset.control.credentials import digest
from narset.server.settings import CertificateSetting, ServerSettings, TokenSetting, exposure_error
from narset.v1 import worker_service_pb2_grpc

# "client" (its CN) is a CI bot operating run-* jobs, "dashboard.example" (a SAN) a viewer.
BOT = CertificateSetting(name="ci-bot", role="operator", subject="client", jobs=("run-*",))
DASHBOARD = CertificateSetting(name="dashboard", role="viewer", subject="dashboard.example")
ROOT = TokenSetting(name="root", role="admin", sha256=digest("root-token"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return throwaway_pki(tmp_path)


def _mutual(pki: Pki, db_path: Path, *certificates: CertificateSetting) -> ServerThread:
    tls = {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_client_ca": pki.ca}
    return ServerThread(db_path, client_certificates=certificates, tokens=(ROOT,), **tls).start()


@pytest.fixture
def mutual(pki: Pki, db_path: Path) -> Iterator[ServerThread]:
    running = _mutual(pki, db_path, BOT, DASHBOARD)
    yield running
    running.stop()


def _connection(pki: Pki, who: str, token: str | None = None) -> Connection:
    cert, key = {"client": (pki.client_cert, pki.client_key), "dashboard": (pki.dashboard_cert, pki.dashboard_key)}[who]
    return Connection(token=token, tls_ca=pki.ca, tls_cert=cert, tls_key=key)


def _client(server: ServerThread, pki: Pki, who: str, token: str | None = None) -> NarsetClient:
    return NarsetClient(server.address, timeout_s=10, connection=_connection(pki, who, token))


def test_a_client_certificate_is_an_identity_with_its_role(mutual, pki):
    """The CI bot's certificate (CN) attaches and submits on its jobs and is the command's issuer; the
    dashboard's (SAN) reads and may not write; neither carries a token. A token wins over a certificate."""
    bot_connection = _connection(pki, "client")
    with bot_connection.channel(mutual.address) as channel:
        worker = worker_service_pb2_grpc.WorkerServiceStub(channel)
        worker.Attach(attach_request("run-7"), timeout=10)
        with pytest.raises(grpc.RpcError) as scope:
            worker.Attach(attach_request("other-1"), timeout=10)
        assert_refusal(scope.value, grpc.StatusCode.PERMISSION_DENIED, reasons.JOB_OUT_OF_SCOPE, "attach.job_id")
        worker.Attach(attach_request("other-1"), timeout=10, metadata=(("authorization", "Bearer root-token"),))
    with _client(mutual, pki, "client") as bot:
        assert bot.submit(deploy("encoder.fc1", command_id="dep-1")).record.command.issued_by == "ci-bot"
        with pytest.raises(NarsetError) as other:
            bot.submit(deploy("encoder.fc1", job="other-1"))
        assert (other.value.code, other.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, reasons.JOB_OUT_OF_SCOPE)
    with _client(mutual, pki, "dashboard") as dashboard:
        assert [j.job_id for j in dashboard.list_jobs()] == ["other-1", "run-7"]
        with pytest.raises(NarsetError) as denied:
            dashboard.submit(deploy("encoder.fc2"))
        assert (denied.value.code, denied.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, reasons.ROLE_FORBIDS)
    with _client(mutual, pki, "dashboard", token="root-token") as root:
        entries = [(e.principal, e.role, e.method, e.outcome) for e in root.list_audit() if e.method == "Attach"]
    assert entries == [
        ("ci-bot", "operator", "Attach", "OK"),
        ("ci-bot", "operator", "Attach", "PERMISSION_DENIED"),
        ("root", "admin", "Attach", "OK"),
    ]


def test_an_unmapped_client_certificate_without_a_token_is_unauthenticated(pki, db_path):
    """A certificate the CA signed but whose names are configured nowhere identifies no one."""
    server = _mutual(pki, db_path, DASHBOARD)
    try:
        with _client(server, pki, "client") as stranger, pytest.raises(NarsetError) as error:
            stranger.list_jobs()
        assert (error.value.code, error.value.reason, error.value.field) == (
            grpc.StatusCode.UNAUTHENTICATED,
            reasons.CERTIFICATE_UNKNOWN,
            "certificate",
        )
        assert "(client)" in error.value.details
        with _client(server, pki, "client", token="root-token") as root:
            assert root.list_jobs() == []
    finally:
        server.stop()


def test_certificate_identities_need_mutual_tls_and_count_as_protection(pki):
    with pytest.raises(pydantic.ValidationError, match="need mutual TLS"):
        ServerSettings(client_certificates=(BOT,))
    public = {"address": "0.0.0.0:50051", "tls_cert": pki.server_cert, "tls_key": pki.server_key}
    assert exposure_error(ServerSettings(**public, tls_client_ca=pki.ca, client_certificates=(BOT,))) is None
    assert "without tokens" in exposure_error(ServerSettings(**public))
