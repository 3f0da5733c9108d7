"""A scripted job and operator for the replica tests: one training job's rank 0 as Narset sees it (the
real gRPC protocol, a simulated Kasmina) and an operator who submits commands, each call sent to the
replica the script names, and retried on another while that one is down.

Everything is a function of the order of the calls, so two runs of the same script, on one replica
or on several, must leave identical ledgers, decisions, embargoes and scaffolds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from narset_testing import PASSING, gates, linear

from narset.contract.stages import LIVE_STAGES
from narset.v1 import (
    command_pb2,
    job_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    telemetry_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

__all__ = ["JOB_ID", "Replicas", "ScriptedJob", "Workload", "ledger_view"]

S = telemetry_pb2
JOB_ID = "replicated-1"
MODULES = [linear(f"b{r}.fc", 16, 16) for r in range(8)]
REGIONS = [job_pb2.Region(name=f"r{r}", patterns=[f"b{r}.*"]) for r in range(8)]
MAX_LIVE = 4
SCHEDULE = command_pb2.AlphaSchedule(warmup_ckpts=2, hold_ckpts=2)
TTL = 5
# Scaffolds take turns: passing gates (mostly a fold), a failing soft gate (persist, then prune), a
# safety flag from their second boundary on (an immediate prune and an embargo of their region).
KINDS = (PASSING, PASSING, PASSING, gates(foldability=0.5), PASSING, PASSING, PASSING, gates(non_finite=True))
UNSAFE = 7
HELPS = {0, 1, 2, 4, 5, 6}  # the kinds whose scaffolds lower the loss as they age (G2 credits them)


class Replicas:
    """Stubs for each replica's address; `call(i, ...)` goes to replica i, and to the others while it fails."""

    def __init__(self, addresses: list[str], timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._channels: list[grpc.Channel] = []
        self._stubs: list[tuple] = []
        for address in addresses:
            self.add(address)
        self.failovers = 0

    def add(self, address: str) -> None:
        channel = grpc.insecure_channel(address)
        self._channels.append(channel)
        self._stubs.append(
            (worker_service_pb2_grpc.WorkerServiceStub(channel), operator_service_pb2_grpc.OperatorServiceStub(channel))
        )

    def replace(self, index: int, address: str) -> None:
        self._channels[index].close()
        channel = grpc.insecure_channel(address)
        self._channels[index] = channel
        self._stubs[index] = (
            worker_service_pb2_grpc.WorkerServiceStub(channel),
            operator_service_pb2_grpc.OperatorServiceStub(channel),
        )

    def __len__(self) -> int:
        return len(self._stubs)

    def call(self, index: int, service: str, method: str, request, deadline_s: float = 60.0):
        """`service` is "worker" or "operator"; UNAVAILABLE (a replica down) moves on to the next replica."""
        stop = time.monotonic() + deadline_s
        attempt = 0
        while True:
            worker, operator = self._stubs[(index + attempt) % len(self._stubs)]
            stub = worker if service == "worker" else operator
            try:
                return getattr(stub, method)(request, timeout=self.timeout_s)
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if time.monotonic() > stop:
                    raise
                attempt += 1
                self.failovers += 1
                time.sleep(0.01)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@dataclass
class Seed:
    """A scaffold as the simulated Kasmina holds it."""

    scaffold_id: str
    module: str
    kind: int
    age: int = 0
    ttl: int = TTL
    extensions: int = 0
    stage: int = S.SCAFFOLD_STAGE_GRAFTING
    paused: bool = False

    def lift(self) -> float:
        return 0.01 * min(self.age, 4) if self.kind in HELPS else 0.0

    def report(self) -> S.ScaffoldReport:
        # A scaffold Narset ended is reported in its end stage without flags (Kasmina's own breaker did not
        # prune it); a safety flag shows from the second boundary on.
        ended = self.stage not in LIVE_STAGES
        telemetry = PASSING if ended or (self.kind == UNSAFE and self.age < 1) else KINDS[self.kind]
        return S.ScaffoldReport(
            scaffold_id=self.scaffold_id,
            module=self.module,
            blueprint="lora",
            stage=self.stage,
            alpha=0.5,
            age_ckpts=self.age,
            ttl_ckpts=self.ttl,
            extensions=self.extensions,
            gates=telemetry,
        )


@dataclass
class ScriptedJob:
    """Rank 0 of a job: reports each boundary as the previous one left it, applies what arrives (each
    command id at most once), reports its results with the next report."""

    boundary: int = 0
    session: str = ""
    seeds: dict[str, Seed] = field(default_factory=dict)
    results: list[S.CommandResult] = field(default_factory=list)
    applied: Counter = field(default_factory=Counter)  # command id -> times applied (must be 1)
    received: Counter = field(default_factory=Counter)  # command id -> times it arrived (>= 1)
    applied_at: dict[str, int] = field(default_factory=dict)
    deploys: int = 0
    banked: float = 0.0  # the lift of folded scaffolds

    def attach_request(self) -> worker_service_pb2.AttachRequest:
        return worker_service_pb2.AttachRequest(
            job_id=JOB_ID,
            world_size=1,
            ranks=[job_pb2.RankInfo(rank=0, hostname="localhost", pid=1, device="cpu")],
            modules=MODULES,
            regions=REGIONS,
            capabilities=job_pb2.WorkerCapabilities(protocol_version=1, blueprints=["lora"]),
        )

    def next_report(self) -> worker_service_pb2.ReportBoundaryRequest:
        """The report of the next boundary (sent, and resent unchanged while replicas fail)."""
        self.boundary += 1
        b = self.boundary
        return worker_service_pb2.ReportBoundaryRequest(
            job_id=JOB_ID,
            session_id=self.session,
            boundary=b,
            step=10 * b,
            probe_loss=self.loss(b),
            metrics={"train_loss": 1.1 * self.loss(b)},
            step_time_ms=2.0,
            scaffolds=[seed.report() for seed in self.seeds.values()],
            results=self.results,
        )

    def loss(self, b: int) -> float:
        """A slow drift down, and a lift from each helpful scaffold as it ages, which a fold keeps."""
        lift = sum(s.lift() for s in self.seeds.values() if s.stage in LIVE_STAGES)
        return 2.0 - 0.0005 * b - self.banked - lift

    def apply(self, response: worker_service_pb2.ReportBoundaryResponse) -> None:
        """Apply the answer's commands at this boundary, then train one interval."""
        b = self.boundary
        # Ended scaffolds were reported once in their final stage: Kasmina forgets them.
        self.seeds = {k: s for k, s in self.seeds.items() if s.stage in LIVE_STAGES}
        results = []
        fresh: set[str] = set()
        for command in response.commands:
            self.received[command.command_id] += 1
            if command.command_id not in self.applied:
                self.applied[command.command_id] += 1
                self.applied_at[command.command_id] = b
                fresh.update(self._apply(command))
            results.append(
                S.CommandResult(
                    command_id=command.command_id,
                    outcome=S.COMMAND_OUTCOME_APPLIED,
                    boundary=self.applied_at[command.command_id],
                )
            )
        self.results = results
        for seed in self.seeds.values():
            if seed.scaffold_id in fresh or seed.stage not in LIVE_STAGES:
                continue
            seed.age += 1
            seed.stage = (
                S.SCAFFOLD_STAGE_EVALUATING
                if seed.age >= seed.ttl
                else (S.SCAFFOLD_STAGE_GRAFTING if seed.age < 2 else S.SCAFFOLD_STAGE_HOLD)
            )

    def _apply(self, command: command_pb2.AdaptationCommand) -> list[str]:
        action = command.WhichOneof("action")
        if action == "deploy":
            seed = Seed(command.deploy.scaffold_id, command.deploy.module, kind=self.deploys % len(KINDS))
            self.deploys += 1
            self.seeds[seed.scaffold_id] = seed
            return [seed.scaffold_id]
        seed = self.seeds.get(getattr(command, action).scaffold.scaffold_id)
        if seed is None:
            return []
        if action == "fold":
            seed.stage = S.SCAFFOLD_STAGE_FUSED
            self.banked += seed.lift()
        elif action == "prune":
            seed.stage = S.SCAFFOLD_STAGE_PRUNED
        elif action == "persist":
            seed.ttl += command.persist.extra_ckpts
            seed.extensions += 1
            seed.stage = S.SCAFFOLD_STAGE_HOLD
        elif action in ("pause", "resume"):
            seed.paused = action == "pause"
        return []


class Workload:
    """The script: attach (to replica 0), then per boundary one report and one operator command, each
    to the replica `route(kind, n)` names, until `commands` commands were accepted; then reports alone
    until no command is in flight. `before_report(boundary)` may run something (a kill) in between."""

    def __init__(
        self,
        replicas: Replicas,
        commands: int = 500,
        route: Callable[[str, int], int] | None = None,
        before_report: Callable[[int, worker_service_pb2.ReportBoundaryRequest], object] | None = None,
    ) -> None:
        self.replicas = replicas
        self.commands = commands
        self.route = route or (lambda kind, n: (n if kind == "report" else n + 1) % len(replicas))
        self.before_report = before_report
        self.job = ScriptedJob()
        self.submitted: list[str] = []
        self.submitted_to: Counter = Counter()
        self.reported_to: Counter = Counter()

    def run(self) -> None:
        self.job.session = self.replicas.call(0, "worker", "Attach", self.job.attach_request()).session_id
        policy = job_pb2.JobPolicy(
            max_live_scaffolds=MAX_LIVE,
            max_scaffolds_per_region=1,
            max_folds_per_boundary=2,
            max_prunes_per_boundary=4,
            embargo_ckpts=3,
            auto=job_pb2.AutoPolicy(enabled=False, blueprint="lora"),
        )
        self.replicas.call(
            1, "operator", "SetPolicy", operator_service_pb2.SetPolicyRequest(job_id=JOB_ID, policy=policy)
        )
        while True:
            self._report()
            if len(self.submitted) < self.commands:
                self._operate(len(self.submitted))
            elif not self.job.seeds and not self.job.results and not self._in_flight():
                return  # every scaffold ended and reported so, every result recorded, nothing in flight
            if self.job.boundary > 20 * self.commands + 100:
                raise AssertionError("the workload did not drain")

    def _report(self) -> None:
        request = self.job.next_report()
        replica = self.route("report", self.job.boundary)
        if self.before_report is not None:
            answered = self.before_report(replica, request)
            if answered is not None:
                self.job.apply(answered)
                return
        self.reported_to[replica] += 1
        self.job.apply(self.replicas.call(replica, "worker", "ReportBoundary", request))

    def _in_flight(self) -> bool:
        request = operator_service_pb2.ListCommandsRequest(
            job_id=JOB_ID, states=[command_pb2.COMMAND_STATE_PENDING, command_pb2.COMMAND_STATE_DELIVERED]
        )
        return bool(self.replicas.call(self.job.boundary, "operator", "ListCommands", request).commands)

    def _operate(self, n: int) -> None:
        """Submit the operator's command n, if one is valid now (else nothing this boundary)."""
        replica = self.route("submit", n)
        scaffolds = self.replicas.call(
            replica, "operator", "ListScaffolds", operator_service_pb2.ListScaffoldsRequest(job_id=JOB_ID)
        ).scaffolds
        state = self.replicas.call(replica, "operator", "GetJob", operator_service_pb2.GetJobRequest(job_id=JOB_ID))
        live = [s for s in scaffolds if s.stage in LIVE_STAGES]
        busy = {s.region for s in live}
        embargoed = {e.region for e in state.embargoes if state.job.last_boundary < e.until_boundary}
        occupied = {s.module for s in scaffolds}
        command = command_pb2.AdaptationCommand(job_id=JOB_ID, command_id=f"op-{n:04d}")
        free = [m.name for m in MODULES if f"r{m.name[1]}" not in busy | embargoed and m.name not in occupied]
        targets = sorted(s.scaffold_id for s in live if s.stage in (S.SCAFFOLD_STAGE_GRAFTING, S.SCAFFOLD_STAGE_HOLD))
        if len(live) < MAX_LIVE and free:
            command.deploy.module = free[n % len(free)]
            command.deploy.blueprint = "lora"
            command.deploy.policy.ttl_ckpts = TTL
            command.deploy.policy.schedule.CopyFrom(SCHEDULE)
        elif targets:
            action = command.pause if (n // 2) % 2 == 0 else command.resume
            action.scaffold.scaffold_id = targets[n % len(targets)]
        else:
            return
        response = self.replicas.call(
            replica, "operator", "SubmitCommand", operator_service_pb2.SubmitCommandRequest(command=command)
        )
        assert response.record.command.command_id == command.command_id
        self.submitted.append(command.command_id)
        self.submitted_to[replica] += 1


def ledger_view(replicas: Replicas, index: int = 0) -> dict:
    """What Narset holds of the job, without times: ledger, decisions, embargoes, scaffolds, job position."""
    ask = lambda method, request: replicas.call(index, "operator", method, request)  # noqa: E731
    commands, token = [], None
    while token != "":
        page = ask("ListCommands", operator_service_pb2.ListCommandsRequest(job_id=JOB_ID, page_token=token or ""))
        commands += page.commands
        token = page.next_page_token
    decisions = ask("ListDecisions", operator_service_pb2.ListDecisionsRequest(job_id=JOB_ID)).decisions
    job = ask("GetJob", operator_service_pb2.GetJobRequest(job_id=JOB_ID))
    scaffolds = ask("ListScaffolds", operator_service_pb2.ListScaffoldsRequest(job_id=JOB_ID, include_ended=True))
    return {
        "ledger": [
            (
                r.command.command_id,
                r.command.WhichOneof("action"),
                r.scaffold_id,
                r.command.issued_by,
                command_pb2.CommandState.Name(r.state),
                r.delivered_boundary,
                r.applied_boundary,
            )
            for r in commands
        ],
        "decisions": [
            (
                d.decision_id,
                d.scaffold_id,
                d.boundary,
                S.DecisionOutcome.Name(d.outcome),
                d.reason,
                d.issued_by,
                d.command_id,
                tuple((v.gate, v.passed) for v in d.verdicts),
            )
            for d in decisions
        ],
        "embargoes": [(e.region, e.until_boundary, e.failures) for e in job.embargoes],
        "scaffolds": [
            (s.scaffold_id, s.module, s.region, S.ScaffoldStage.Name(s.stage), s.deployed_boundary, s.extensions)
            for s in scaffolds.scaffolds
        ],
        "job": (job.job.last_boundary, job.job.last_step, job.job.live_scaffolds),
    }
