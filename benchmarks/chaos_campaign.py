"""Chaos campaign: jobs and commands while `narset serve` is killed with SIGKILL at random points.

    python benchmarks/chaos_campaign.py --jobs 20 --commands 1000 --seed 0

A real `narset serve` process on a fixed loopback port and a real SQLite file. Each job is rank 0 of a
training job without its model: the worker's real link (`NarsetTransport`: a link child process per
job, re-attach with the restored state after a failure, results held until Narset has them) at one
boundary every few tens of milliseconds; it applies each command it receives once, in the order it
receives them, reports the results and, once its deploy is applied, the scaffold as live. An
operator submits each job's commands (a deploy, then pauses of its scaffold) one after the other
through the Python client, retrying with the same command id until Narset acknowledges it. Meanwhile
the server is killed with SIGKILL at random intervals and started again on the same database.

Checked at the end, on a fresh server: every acknowledged command is in the ledger, APPLIED, and was
applied by its job (0 lost); no job received a command again after Narset had acknowledged its result
(0 applied twice; a redelivery before that is counted, and deduplicated by id as the worker does);
each job applied its commands in the order they were submitted. Prints the figures (or JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from kasmina_worker.link.narset_transport import NarsetTransport
from narset.client import NarsetClient, NarsetError
from narset.contract import reasons
from narset.server.launch import ServeProcess, free_port
from narset.server.logs import configure_logging
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["Figures", "run"]

_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_WAIT_FOR = (reasons.JOB_NOT_FOUND, reasons.SCAFFOLD_PENDING)
_MODULES = [
    job_pb2.ModuleInfo(
        name=name,
        type="Linear",
        in_features=8,
        out_features=8,
        parameters=[job_pb2.ParameterInfo(name="weight", shape=[8, 8], dtype="float32")],
    )
    for name in ("fc1", "fc2")
]


@dataclass
class Figures:
    """What a campaign did and found."""

    jobs: int = 0
    commands: int = 0
    acknowledged: int = 0
    kills: int = 0
    submit_retries: int = 0
    failed_exchanges: int = 0  # boundaries whose exchange a kill cut off (the job trained on)
    redeliveries: int = 0  # a command received again before Narset had its result: deduplicated by id
    lost: int = 0
    applied_twice: int = 0
    out_of_order: int = 0
    seconds: float = 0.0

    @property
    def violations(self) -> int:
        return self.lost + self.applied_twice + self.out_of_order


class Server:
    """`narset serve` on one address across kills, on one database."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.address = f"127.0.0.1:{free_port()}"
        self.process = self._start()
        self.kills = 0

    def _start(self) -> ServeProcess:
        return ServeProcess(self.db_path, address=self.address, log_level="warning")

    def kill_and_restart(self) -> None:
        self.process.kill()
        self.kills += 1
        self.process = self._start()

    def stop(self) -> None:
        self.process.terminate()


class ScriptedJob(threading.Thread):
    """Rank 0 of a job through the worker's real link: one boundary per `interval_s`, each command applied
    once in the order received."""

    def __init__(self, address: str, job_id: str, interval_s: float, stop: threading.Event) -> None:
        super().__init__(name=f"job-{job_id}", daemon=True)
        self.job_id, self.interval_s, self.stop = job_id, interval_s, stop
        self.boundary = 0
        self.applied: list[str] = []  # in the order applied
        self.acknowledged: set[str] = set()  # applied, and Narset has the result
        self.redeliveries = 0
        self.applied_twice = 0
        self.failed_exchanges = 0
        self.scaffold_id = ""
        self.error: BaseException | None = None
        self.transport = NarsetTransport(address, self._registration, timeout_s=2.0)

    def _scaffolds(self) -> list[telemetry_pb2.ScaffoldReport]:
        """Its deploy's scaffold, live and young (no exit is due), once applied."""
        if not self.scaffold_id:
            return []
        gates = telemetry_pb2.GateTelemetry(foldability=0.99, jitter_p95=0.01, drift=0.01, step_time_ratio=1.0)
        return [
            telemetry_pb2.ScaffoldReport(
                scaffold_id=self.scaffold_id,
                module="fc1",
                stage=telemetry_pb2.SCAFFOLD_STAGE_HOLD,
                alpha=0.5,
                age_ckpts=1,
                ttl_ckpts=12,
                gates=gates,
            )
        ]

    def _registration(self) -> worker_service_pb2.AttachRequest:
        """What the worker registers at every (re-)attach (called inside an exchange): its module tree, the
        last boundary it completed and every command it has applied."""
        return worker_service_pb2.AttachRequest(
            job_id=self.job_id,
            world_size=1,
            ranks=[job_pb2.RankInfo(rank=0, hostname="localhost", pid=1, device="cpu")],
            modules=_MODULES,
            regions=[job_pb2.Region(name="all", patterns=["*"])],
            capabilities=job_pb2.WorkerCapabilities(protocol_version=1, blueprints=["lora"]),
            restored=worker_service_pb2.RestoredState(
                boundary=self.boundary - 1, applied_command_ids=self.applied, scaffolds=self._scaffolds()
            ),
        )

    def run(self) -> None:
        try:
            results: list[telemetry_pb2.CommandResult] = []
            while not self.stop.is_set():
                self.boundary += 1
                applied_before = list(self.applied)
                report = worker_service_pb2.ReportBoundaryRequest(
                    job_id=self.job_id,
                    boundary=self.boundary,
                    step=10 * self.boundary,
                    probe_loss=1.0,
                    step_time_ms=1.0,
                    scaffolds=self._scaffolds(),
                    results=results,
                )
                commands = self.transport.exchange(report)
                if self.transport.last_error is None:
                    self.acknowledged.update(applied_before)  # the report held every earlier result
                else:
                    self.failed_exchanges += 1
                results = []
                for command in commands:
                    if command.command_id in self.acknowledged:
                        self.applied_twice += 1  # Narset had its result: a worker would apply it again
                    elif command.command_id in self.applied:
                        self.redeliveries += 1  # its result had not reached Narset: deduplicated by id
                    else:
                        results.append(self._apply(command))
                time.sleep(self.interval_s)
        except BaseException as error:  # reported by the campaign, not lost in a thread
            self.error = error

    def _apply(self, command: command_pb2.AdaptationCommand) -> telemetry_pb2.CommandResult:
        self.applied.append(command.command_id)
        if command.WhichOneof("action") == "deploy":
            self.scaffold_id = command.deploy.scaffold_id
        return telemetry_pb2.CommandResult(
            command_id=command.command_id, outcome=telemetry_pb2.COMMAND_OUTCOME_APPLIED, boundary=self.boundary
        )


def _command(job_id: str, index: int) -> command_pb2.AdaptationCommand:
    """A job's command `index`: its deploy first, then pauses of that scaffold."""
    command = command_pb2.AdaptationCommand(job_id=job_id, command_id=f"{job_id}.c{index:03d}")
    if index == 0:
        command.deploy.module, command.deploy.blueprint = "fc1", "lora"
        command.deploy.scaffold_id = f"{job_id}.sc"
    else:
        command.pause.scaffold.scaffold_id = f"{job_id}.sc"
    return command


def _submit_all(address: str, jobs: list[str], per_job: int, figures: Figures, stop: threading.Event) -> list[str]:
    """Submit every job's commands in order, round robin over the jobs; the acknowledged ids."""
    acknowledged: list[str] = []
    with NarsetClient(address, timeout_s=5.0) as client:
        for index in range(per_job):
            for job_id in jobs:
                command = _command(job_id, index)
                while not stop.is_set():
                    try:
                        client.submit(command)
                        acknowledged.append(command.command_id)
                        break
                    except NarsetError as error:
                        # Narset down, the job not attached yet, or the deploy a pause needs not applied
                        # yet: the same id again.
                        if error.code not in _RETRY and error.reason not in _WAIT_FOR:
                            raise
                        figures.submit_retries += 1
                        time.sleep(0.05)
    return acknowledged


def _kill_at_random(server: Server, rng: random.Random, until: Callable[[], bool], gap_s: tuple[float, float]) -> None:
    while not until():
        deadline = time.monotonic() + rng.uniform(*gap_s)
        while time.monotonic() < deadline:
            if until():
                return
            time.sleep(0.02)
        server.kill_and_restart()


def _all_applied(address: str, jobs: list[str], per_job: int) -> bool:
    try:
        with NarsetClient(address, timeout_s=5.0) as client:
            for job_id in jobs:
                records = client.list_commands(job_id)
                if len(records) < per_job or any(r.state != command_pb2.COMMAND_STATE_APPLIED for r in records):
                    return False
    except NarsetError:
        return False  # down: ask again after the restart
    return True


def _check(address: str, jobs: list[ScriptedJob], per_job: int, acknowledged: list[str], figures: Figures) -> None:
    with NarsetClient(address, timeout_s=10.0) as client:
        applied_in_ledger = {
            r.command.command_id
            for job in jobs
            for r in client.list_commands(job.job_id)
            if r.state == command_pb2.COMMAND_STATE_APPLIED
        }
    applied_by_jobs = {c for job in jobs for c in job.applied}
    figures.lost = sum(c not in applied_in_ledger or c not in applied_by_jobs for c in acknowledged)
    figures.applied_twice = sum(job.applied_twice for job in jobs)
    figures.redeliveries = sum(job.redeliveries for job in jobs)
    figures.failed_exchanges = sum(job.failed_exchanges for job in jobs)
    figures.out_of_order = sum(
        job.applied != [_command(job.job_id, i).command_id for i in range(per_job)] for job in jobs
    )


def run(jobs: int, commands: int, workdir: Path, kills: int = 8, seed: int = 0, deadline_s: float = 240.0) -> Figures:
    """Run the campaign: `commands` spread evenly over `jobs`, and at least `kills` kills; the figures once
    every command is applied."""
    per_job = commands // jobs
    figures = Figures(jobs=jobs, commands=per_job * jobs)
    server = Server(workdir / "narset.db")
    stop = threading.Event()
    job_ids = [f"chaos-{i:02d}" for i in range(jobs)]
    scripted = [ScriptedJob(server.address, job_id, 0.05, stop) for job_id in job_ids]
    started = time.monotonic()
    acknowledged: list[str] = []
    done = threading.Event()
    submitted = threading.Event()

    def finished() -> bool:
        return done.is_set() or time.monotonic() - started > deadline_s

    failures: list[BaseException] = []

    def submit() -> None:
        try:
            acknowledged.extend(_submit_all(server.address, job_ids, per_job, figures, stop))
            submitted.set()
        except BaseException as error:  # raised by the campaign, not lost in a thread
            failures.append(error)
            done.set()

    killer = threading.Thread(
        target=_kill_at_random, args=(server, random.Random(seed), finished, (0.2, 1.5)), daemon=True
    )
    submitter = threading.Thread(target=submit, daemon=True)
    try:
        for job in scripted:
            job.start()
        submitter.start()
        killer.start()
        while not finished():
            if submitted.is_set() and server.kills >= kills and _all_applied(server.address, job_ids, per_job):
                done.set()
            time.sleep(0.25)
        if failures:
            raise failures[0]
        if not done.is_set():
            raise TimeoutError(f"not every command was applied within {deadline_s} s")
        killer.join()
        stop.set()
        for job in scripted:
            job.join(timeout=30)
            if job.error is not None:
                raise job.error
        figures.kills = server.kills
        figures.acknowledged = len(acknowledged)
        server.kill_and_restart()  # the check reads what a fresh server finds on disk
        _check(server.address, scripted, per_job, acknowledged, figures)
    finally:
        stop.set()
        done.set()
        for job in scripted:
            job.transport.close()
        server.stop()
    figures.seconds = time.monotonic() - started
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=8, help="at least this many kill -9 of narset serve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    configure_logging("warning", "console")  # the links' re-attach notes on stderr, the figures on stdout
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.jobs, args.commands, Path(tmp), args.kills, args.seed)
    if args.json:
        print(json.dumps(asdict(figures) | {"violations": figures.violations}))
    else:
        print(
            f"{figures.jobs} jobs, {figures.commands} commands ({figures.acknowledged} acknowledged) in "
            f"{figures.seconds:.0f} s with {figures.kills} kill -9 of narset serve ({figures.failed_exchanges} "
            f"boundary exchanges and {figures.submit_retries} submits retried)"
        )
        print(
            f"lost {figures.lost}, applied twice {figures.applied_twice}, jobs out of order {figures.out_of_order}; "
            f"redelivered before their result was acknowledged: {figures.redeliveries}"
        )
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
