"""End-to-end helpers: a training job process driven boundary by boundary, and the `narset` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["JOB_SCRIPT", "TrainingJob", "cli_deploy", "cli_json", "narset_cli"]

JOB_SCRIPT = Path(__file__).with_name("train_job.py")


class TrainingJob:
    """`train_job.py` as a child process, advanced one boundary at a time."""

    def __init__(self, narset: str, job: str, ckpt: Path, *extra: str) -> None:
        argv = [sys.executable, str(JOB_SCRIPT), "--narset", narset, "--job", job, "--ckpt", str(ckpt), *extra]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def boundary(self) -> dict:
        """The next boundary's summary (JSON lines only; the worker's own log lines are skipped)."""
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"training job exited with {self.process.wait()}")
            if line.startswith('{"boundary"'):
                return json.loads(line)

    def order(self, order: str) -> None:
        self.process.stdin.write(order + "\n")
        self.process.stdin.flush()

    def stop(self) -> int:
        self.order("stop")
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def narset_cli(address: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "narset", *argv, "--server", address], capture_output=True, text=True, timeout=60
    )


def cli_deploy(address: str, job: str, module: str, blueprint: str, *flags: str) -> subprocess.CompletedProcess:
    """`narset deploy JOB --module MODULE --blueprint BLUEPRINT FLAGS`, which must succeed."""
    done = narset_cli(address, "deploy", job, "--module", module, "--blueprint", blueprint, *flags)
    assert done.returncode == 0, done.stderr
    return done


def cli_json(address: str, *argv: str) -> dict:
    """`narset ARGV --json` against `address`, which must succeed; its document."""
    done = narset_cli(address, *argv, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
