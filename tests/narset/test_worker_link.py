"""The worker link: every gRPC object in a child process, every wait bounded."""

from __future__ import annotations

import time

import pytest
from narset_testing import attach_request

from kasmina_worker.link.worker_link import LinkError, WorkerLink
from narset.contract import reasons
from narset.v1 import worker_service_pb2


def test_link_attaches_and_reports(server, client):
    """Attach and a boundary report go through the link process to a real server."""
    link = WorkerLink(server.address, timeout_s=5)
    try:
        attached = link.call("Attach", attach_request("run-7"))
        response = link.call(
            "ReportBoundary",
            worker_service_pb2.ReportBoundaryRequest(
                job_id="run-7", session_id=attached.session_id, boundary=1, step=5, probe_loss=0.5
            ),
        )
        assert list(response.commands) == []
        assert client.get_job("run-7").job.last_probe_loss == 0.5
    finally:
        link.close()


def test_refusal_comes_back_with_its_status(server):
    """A refused request surfaces as LinkError with the server's status, message, reason code and field."""
    link = WorkerLink(server.address, timeout_s=5)
    try:
        with pytest.raises(LinkError) as refused:
            link.call("Attach", attach_request("run-7", world_size=0))
        assert refused.value.code == "INVALID_ARGUMENT" and refused.value.refused
        assert refused.value.details.startswith("attach.world_size:")
        assert (refused.value.reason, refused.value.field) == (reasons.INVALID_FIELD, "attach.world_size")
    finally:
        link.close()


def test_unreachable_narset_fails_fast(unused_tcp_port):
    """With nothing listening, a call fails as unreachable within the timeout, not later."""
    link = WorkerLink(f"127.0.0.1:{unused_tcp_port}", timeout_s=1.0)
    try:
        for _ in range(2):  # the first call also starts the link process
            started = time.monotonic()
            with pytest.raises(LinkError) as down:
                link.call("Attach", attach_request("run-7"))
            assert not down.value.refused, down.value
            assert (down.value.reason, down.value.field) == ("", "")
        assert time.monotonic() - started < 1.0 + 1.0
    finally:
        link.close()
