"""A 2-rank torchrun job attached to a real `narset serve`, driven by `narset deploy` and `narset fold`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_testing import cli_deploy, cli_json, narset_cli

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "train_example.py"


def wait_for(what: str, check, timeout_s: float = 180.0, job: subprocess.Popen | None = None):
    """Poll the server's state until `check()` returns a truthy value (the job must stay alive)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if job is not None and job.poll() is not None:
            raise AssertionError(f"torchrun exited with {job.returncode} while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_rank_job_applies_cli_deploy_and_fold_once_on_both_ranks(narset_server, tmp_path):
    """Rank 0 talks to Narset, both ranks apply the CLI's deploy and fold exactly once."""
    address, stop, out = narset_server.address, tmp_path / "stop", tmp_path / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE)]
    args = ["--narset", address, "--job", "dist", "--steps", "1", "--ckpt-every", "5", "--wrap", "ddp"]
    job = subprocess.Popen(
        [*torchrun, *args, "--until-file", str(stop), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        attached = wait_for("the job to attach", lambda: cli_json(address, "jobs")["jobs"], job=job)
        assert attached[0]["world_size"] == 2
        # A long life: the gates must not decide an exit before the operator's fold arrives.
        long_life = ["--warmup", "1", "--hold", "500", "--ttl", "501"]
        cli_deploy(address, "dist", "fc2", "lora", "--id", "d1", *long_life)

        def applied(command_id: str) -> bool:
            commands = cli_json(address, "commands", "dist")["commands"]
            return any(
                c["command"]["command_id"] == command_id and c["state"] == "COMMAND_STATE_APPLIED" for c in commands
            )

        wait_for("the deploy to apply", lambda: applied("d1"), job=job)
        wait_for(
            "the scaffold to report live",
            lambda: any(
                s["stage"] != "SCAFFOLD_STAGE_PENDING" for s in cli_json(address, "scaffolds", "dist")["scaffolds"]
            ),
            job=job,
        )
        fold = narset_cli(address, "fold", "dist", "--scaffold", "d1", "--force", "--id", "f1", "--reason", "test")
        assert fold.returncode == 0, fold.stderr
        wait_for("the fold to apply", lambda: applied("f1"), job=job)
        wait_for(
            "the scaffold to report fused",
            lambda: cli_json(address, "scaffolds", "dist", "--all")["scaffolds"][0]["stage"] == "SCAFFOLD_STAGE_FUSED",
            job=job,
        )
        stop.touch()
        assert job.wait(timeout=120) == 0, job.stderr.read()[-4000:]
    finally:
        if job.poll() is None:
            # SIGTERM, which torchrun passes on to its ranks (a SIGKILL of torchrun alone leaves them running).
            job.terminate()
            job.wait(timeout=60)
    result = json.loads(out.read_text())
    assert result["applied_by_rank"] == [["d1", "f1"], ["d1", "f1"]]
    assert result["scaffolds"] == []
    commands = cli_json(address, "commands", "dist")["commands"]
    assert [(c["command"]["command_id"], c["state"]) for c in commands] == [
        ("d1", "COMMAND_STATE_APPLIED"),
        ("f1", "COMMAND_STATE_APPLIED"),
    ]
