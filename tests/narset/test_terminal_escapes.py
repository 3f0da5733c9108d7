"""Names, ids and reasons chosen by jobs and clients reach the terminal escaped (issue 12): module and
region names with escape sequences were printed raw by `narset modules`."""

from __future__ import annotations

import pytest
from narset_testing import attach_request, deploy

from narset.cli import main
from narset.cli.render import escaped
from narset.v1 import job_pb2, telemetry_pb2, worker_service_pb2

CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
TITLE = "\x1b]0;owned\x07"  # retitle the terminal
FLIP = "\u202e"  # right-to-left override: the rest of the line reads backwards


def test_escaped_shows_every_control_and_format_character():
    assert escaped("encoder.fc1 é ü 三") == "encoder.fc1 é ü 三"  # printable text is kept as it is
    assert escaped(f"a{CLEAR}b{TITLE}c{FLIP}d\r\n\t") == "a\\x1b[2J\\x1b[Hb\\x1b]0;owned\\x07c\\u202ed\\r\\n\\t"


@pytest.fixture
def hostile(server, worker_stub, client):
    """run-7 with a module and a region whose names, and a command result whose message, carry terminal
    controls."""
    request = attach_request("run-7")
    request.modules.append(job_pb2.ModuleInfo(name=f"evil{CLEAR}.fc", type=f"Linear{FLIP}"))
    request.regions.append(job_pb2.Region(name=f"r{TITLE}", patterns=[f"evil{CLEAR}*"]))
    session = worker_stub.Attach(request).session_id
    client.submit(deploy("encoder.fc1", command_id="dep-1"))
    rejected = telemetry_pb2.CommandResult(
        command_id="dep-1", outcome=telemetry_pb2.COMMAND_OUTCOME_REJECTED, boundary=1, message=f"no{TITLE}"
    )
    for boundary, results in ((1, []), (2, [rejected])):
        report = worker_service_pb2.ReportBoundaryRequest(
            job_id="run-7", session_id=session, boundary=boundary, step=boundary, results=results
        )
        worker_stub.ReportBoundary(report)
    return server


@pytest.mark.parametrize(
    "argv", [["modules", "run-7"], ["job", "run-7"], ["commands", "run-7"], ["watch", "run-7", "--no-follow"]]
)
def test_the_cli_prints_hostile_names_and_reasons_escaped(hostile, capsys, argv):
    assert main([*argv, "--server", hostile.address]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and FLIP not in out
    assert "\\x1b" in out or "\\u202e" in out


def test_a_refusal_echoing_a_hostile_value_is_printed_escaped(hostile, capsys):
    """The refusal message echoes the scaffold id it did not find: stderr shows it escaped."""
    assert main(["scaffold", "run-7", f"x{CLEAR}", "--server", hostile.address]) == 3
    err = capsys.readouterr().err
    assert "\x1b" not in err and "x\\x1b[2J\\x1b[H" in err
