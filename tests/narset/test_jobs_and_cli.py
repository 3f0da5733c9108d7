"""A job attached through the worker-facing RPC is visible through the CLI and the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
from narset_testing import MODULES, assert_refusal, attach_request

from narset.cli import main
from narset.contract import reasons


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_attached_job_appears_in_jobs_and_modules(server, worker_stub, capsys):
    """`narset jobs` and `narset modules JOB` show a job right after its attach."""
    worker_stub.Attach(attach_request("run-7"))
    code, out, _ = run_cli(capsys, "jobs", "--server", server.address)
    assert code == 0
    assert "run-7" in out and "ATTACHED" in out
    code, out, _ = run_cli(capsys, "modules", "run-7", "--server", server.address)
    assert code == 0
    for module in MODULES:
        assert module.name in out
    code, out, _ = run_cli(capsys, "modules", "run-7", "--server", server.address, "--json")
    document = json.loads(out)
    assert [m["name"] for m in document["modules"]] == [m.name for m in MODULES]
    assert document["modules"][0]["parameters"][0]["shape"] == ["32", "16"]


def test_cli_subprocess_reads_server_from_environment(server, worker_stub):
    """The installed `narset` entry point works as a process and honours $NARSET_SERVER."""
    worker_stub.Attach(attach_request("env-job"))
    env = {**os.environ, "NARSET_SERVER": server.address}
    done = subprocess.run(
        [sys.executable, "-m", "narset", "jobs", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [j["job_id"] for j in json.loads(done.stdout)["jobs"]] == ["env-job"]


def test_job_describes_regions_and_policy(server, worker_stub, capsys):
    """`narset job JOB --json` returns the job, its regions and its default policy."""
    worker_stub.Attach(attach_request("run-7"))
    code, out, _ = run_cli(capsys, "job", "run-7", "--server", server.address, "--json")
    document = json.loads(out)
    assert code == 0
    assert [r["name"] for r in document["job"]["regions"]] == ["encoder", "decoder", "head"]
    assert document["policy"]["max_live_scaffolds"] == 3


def test_blueprints_lists_the_builtin_catalogue(server, capsys):
    """The built-in blueprints are served with their hosts, size classes and folds."""
    code, out, _ = run_cli(capsys, "blueprints", "--server", server.address, "--json")
    blueprints = {b["name"]: b for b in json.loads(out)["blueprints"]}
    assert set(blueprints) == {"lora", "expand", "conv_branch", "dense_delta", "residual_mlp", "moe_expert"}
    assert blueprints["lora"]["host_types"] == ["Linear", "Conv1D", "Conv2d"]
    assert blueprints["conv_branch"]["folds"] == ["FOLD_KIND_REPARAM"]
    assert blueprints["moe_expert"]["folds"] == ["FOLD_KIND_ROUTER"]
    assert blueprints["residual_mlp"]["default_policy"]["schedule"]["decay_ckpts"] == 7


def test_exit_codes_distinguish_usage_refusal_and_unreachable(server, capsys, unused_tcp_port):
    """Usage errors exit 2, server refusals 3 with one line on stderr, an unreachable server 4."""
    with pytest.raises(SystemExit) as usage:
        main(["deploy", "run-7", "--server", server.address])  # --module and --blueprint missing
    assert usage.value.code == 2
    capsys.readouterr()
    code, _, err = run_cli(capsys, "modules", "no-such-job", "--server", server.address)
    assert code == 3
    assert err.strip() == "narset: refused (NOT_FOUND): job_id: no job 'no-such-job'"
    code, _, err = run_cli(capsys, "jobs", "--server", f"127.0.0.1:{unused_tcp_port}", "--timeout", "2")
    assert code == 4
    assert "cannot reach Narset" in err and len(err.strip().splitlines()) == 1


def test_json_error_carries_reason_and_field(server, capsys, unused_tcp_port):
    """With --json a failed call also prints {"error": ...} on stdout: a refusal with its reason and field."""
    code, out, err = run_cli(capsys, "modules", "no-such-job", "--server", server.address, "--json")
    assert code == 3
    assert err.strip() == "narset: refused (NOT_FOUND): job_id: no job 'no-such-job'"
    assert json.loads(out) == {
        "error": {
            "code": "NOT_FOUND",
            "reason": reasons.JOB_NOT_FOUND,
            "field": "job_id",
            "message": "job_id: no job 'no-such-job'",
        }
    }
    code, out, err = run_cli(capsys, "jobs", "--server", f"127.0.0.1:{unused_tcp_port}", "--timeout", "2", "--json")
    assert code == 4
    assert "cannot reach Narset" in err
    error = json.loads(out)["error"]
    assert (error["code"], error["reason"], error["field"]) == ("UNAVAILABLE", "", "")


def test_attach_refuses_malformed_registration(worker_stub):
    """Attach names the bad field: empty job id, zero ranks, duplicate module, region without pattern."""
    cases = {
        "attach.job_id": attach_request(""),
        "attach.world_size": attach_request(world_size=0),
    }
    duplicate = attach_request()
    duplicate.modules.append(duplicate.modules[0])
    cases[f"attach.modules[{len(duplicate.modules) - 1}].name"] = duplicate
    no_pattern = attach_request()
    del no_pattern.regions[0].patterns[:]
    cases["attach.regions[0].patterns"] = no_pattern
    for field, request in cases.items():
        with pytest.raises(grpc.RpcError) as refused:
            worker_stub.Attach(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(field + ":"), refused.value.details()
        assert_refusal(refused.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_FIELD, field)


def test_health_exits_zero_only_while_serving(server, capsys):
    """`narset health` prints SERVING and exits 0 for the server and each service; an unknown service is refused."""
    assert run_cli(capsys, "health", "--server", server.address)[:2] == (0, "SERVING\n")
    code, out, _ = run_cli(
        capsys, "health", "--service", "narset.v1.OperatorService", "--json", "--server", server.address
    )
    assert code == 0 and json.loads(out) == {"service": "narset.v1.OperatorService", "status": "SERVING"}
    code, _, err = run_cli(capsys, "health", "--service", "narset.v1.Nothing", "--server", server.address)
    assert code == 3 and "NOT_FOUND" in err
    server.stop()
    code, _, err = run_cli(capsys, "health", "--timeout", "2", "--server", server.address)
    assert code == 4 and "UNAVAILABLE" in err
