"""Failures across real processes: Narset down and back, a job killed and resumed, forking loaders."""

from __future__ import annotations

import pytest
import torch
from e2e_testing import TrainingJob, cli_deploy, cli_json

from narset.server.launch import ServeProcess

pytestmark = pytest.mark.slow


def test_job_with_forking_dataloader_runs_five_boundaries(narset_server, tmp_path):
    """A job whose DataLoader forks 2 workers every interval runs 5 boundaries against the server."""
    job = TrainingJob(narset_server.address, "forky", tmp_path / "ckpt.pt", "--workers", "2")
    try:
        for expected in range(1, 6):
            assert job.boundary()["boundary"] == expected
            job.order("next" if expected < 5 else "stop")
        assert job.process.wait(timeout=60) == 0
    finally:
        if job.process.poll() is None:
            job.kill()
    jobs = cli_json(narset_server.address, "jobs")["jobs"]
    assert [(j["job_id"], j["last_boundary"], j["state"]) for j in jobs] == [("forky", "5", "JOB_STATE_DETACHED")]


def test_narset_killed_then_restarted_job_keeps_training_and_applies_once(tmp_path):
    """With Narset killed, each boundary returns within the timeout; restarted on the same database, the
    job re-attaches, the command submitted meanwhile arrives and is applied exactly once."""
    db = tmp_path / "narset.db"
    server = ServeProcess(db)
    job = TrainingJob(server.address, "resilient", tmp_path / "ckpt.pt", "--timeout", "1.0")
    try:
        for _ in range(2):
            job.boundary()
            job.order("next")
        server.kill()
        for _ in range(3):
            down = job.boundary()
            assert down["elapsed_s"] < 1.0 + 0.5 + 3.0, down  # the timeout and margin, plus the boundary's own work
            job.order("next")
        server = ServeProcess(db, address=server.address)
        deploy = cli_deploy(server.address, "resilient", "fc2", "lora", "--id", "dep-1")
        assert "PENDING" in deploy.stdout
        applications, applied_at = [], None
        for _ in range(20):  # until the job has re-attached and the command arrived, then 2 more boundaries
            summary = job.boundary()
            applications += [r for r in summary["results"] if r["id"] == "dep-1"]
            applied_at = applied_at or (summary["boundary"] if applications else None)
            job.order("next")
            if applied_at is not None and summary["boundary"] >= applied_at + 2:
                break
        # Delivered again only while its result is in flight, and then acknowledged, never re-applied.
        assert [r["msg"] for r in applications][0].startswith("deployed lora")
        assert all(r["msg"] == "already applied (duplicate delivery)" for r in applications[1:])
        assert summary["module_types"]["fc2"] == "Scaffold"
        assert summary["applied"] == ["dep-1"]
        commands = cli_json(server.address, "commands", "resilient")["commands"]
        assert [(c["command"]["command_id"], c["state"]) for c in commands] == [("dep-1", "COMMAND_STATE_APPLIED")]
        assert job.stop() == 0
    finally:
        if job.process.poll() is None:
            job.kill()
        server.terminate()


def run_to_end(job: TrainingJob, last: int, address: str, deploy_before: int) -> list[dict]:
    """Advance `job` to boundary `last`, deploying by CLI before boundary `deploy_before`; saves at 1."""
    seen = []
    while True:
        summary = job.boundary()
        seen.append(summary)
        k = summary["boundary"]
        if k + 1 == deploy_before:
            cli_deploy(address, "again", "fc1", "lora", "--id", "dep-1")
        if k == last:
            assert job.stop() == 0
            return seen
        job.order("save" if k == 1 else "next")


def test_job_killed_before_saving_resumes_with_the_command_applied_once(tmp_path):
    """Killed after the boundary that applied a deploy but before saving, resumed from the older
    checkpoint: the deploy is applied exactly once and the final parameters equal an uninterrupted run's."""
    reference_server = ServeProcess(tmp_path / "reference.db")
    try:
        reference = TrainingJob(reference_server.address, "again", tmp_path / "reference.pt")
        run_to_end(reference, 5, reference_server.address, deploy_before=2)
    finally:
        reference_server.terminate()

    server = ServeProcess(tmp_path / "narset.db")
    try:
        crashing = TrainingJob(server.address, "again", tmp_path / "crash.pt")
        assert crashing.boundary()["boundary"] == 1
        cli_deploy(server.address, "again", "fc1", "lora", "--id", "dep-1")
        crashing.order("save")
        applied = crashing.boundary()
        assert applied["boundary"] == 2 and applied["applied"] == ["dep-1"]
        crashing.kill()  # before the checkpoint of boundary 2 is saved

        resumed = TrainingJob(server.address, "again", tmp_path / "crash.pt", "--resume")
        summaries = []
        while True:
            summaries.append(resumed.boundary())
            if summaries[-1]["boundary"] == 5:
                assert resumed.stop() == 0
                break
            resumed.order("next")
        assert summaries[0]["boundary"] == 2
        assert [r["id"] for s in summaries for r in s["results"] if r["outcome"] == "COMMAND_OUTCOME_APPLIED"] == [
            "dep-1"
        ]
        commands = cli_json(server.address, "commands", "again")["commands"]
        assert [(c["command"]["command_id"], c["state"]) for c in commands] == [("dep-1", "COMMAND_STATE_APPLIED")]
    finally:
        server.terminate()
    expected = torch.load(tmp_path / "reference.final", weights_only=True)
    actual = torch.load(tmp_path / "crash.final", weights_only=True)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
