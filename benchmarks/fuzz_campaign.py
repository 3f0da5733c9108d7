"""Hostile-input fuzz campaign: property-based requests to every RPC of a live `narset serve`.

    python benchmarks/fuzz_campaign.py --cases 20000

A real `narset serve` process on a loopback port and a real SQLite file holds two attached jobs, a
live scaffold, delivered and pending commands and decisions. Hypothesis then draws, for a method of
either service, either random bytes or a valid request of that method with one to three fields
mutated: numeric extremes, NaN and infinities, unknown enum values, long and control-character
strings, 1 MB strings, huge repeated fields, and the ids and session credentials of the other job.
Every answer must be OK or a Narset refusal (a reason code of `narset.contract.reasons`); the only
status without one is RESOURCE_EXHAUSTED for a request over the server's message limit. After a
refused request every table but the audit log (which records refusals, by design) must hash as
before; an accepted one becomes the new state. The server must stay up, and its peak resident
memory is reported. Prints the figures (or JSON with --json); a violation ends the run with the
shrunk request that caused it (exit status 1).

With --tokens, Narset runs with bearer tokens (an admin, a viewer, a worker of one job, an operator of
the other) and each case is sent with one of them, an unknown token or none: the identity refusals
(UNAUTHENTICATED, PERMISSION_DENIED) must carry their reasons and change nothing either.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from control_plane import rss_kib
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from narset.contract.limits import MAX_MESSAGE_BYTES
from narset.contract.reasons import REASONS, read_reason
from narset.control.credentials import digest
from narset.server.launch import ServeProcess
from narset.v1 import (
    command_pb2,
    job_pb2,
    operator_service_pb2,
    telemetry_pb2,
    worker_service_pb2,
)

__all__ = ["Campaign", "Figures", "run"]

SERVICES = (
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"],
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"],
)
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
JOBS = ("fuzz-a", "fuzz-b")
# Identities of the --tokens mode, each "<name>-token": (role, job patterns).
PEOPLE = {
    "root": ("admin", ("*",)),
    "val": ("viewer", ("*",)),
    "launcher-a": ("worker", ("fuzz-a",)),
    "ops-b": ("operator", ("fuzz-b",)),
}
# Who a case is sent as: mostly the admin (so that requests reach Narset's logic), else anyone.
CALLERS = ("root", "root", "root", "val", "launcher-a", "ops-b", "stranger", None)
# Tables a refused request may write: the audit log records every refused mutating call.
AUDITED = frozenset({"audit"})
_F = FieldDescriptor
_INT_EXTREMES = {
    _F.TYPE_INT32: (0, 1, -1, 2**31 - 1, -(2**31)),
    _F.TYPE_INT64: (0, 1, -1, 2**53 - 1, 2**53, 2**63 - 1, -(2**63)),
}
_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, -1.0, 0.5, 2.0)


def _linear(name: str, fan_in: int, fan_out: int) -> job_pb2.ModuleInfo:
    return job_pb2.ModuleInfo(
        name=name,
        type="Linear",
        in_features=fan_in,
        out_features=fan_out,
        parameters=[job_pb2.ParameterInfo(name="weight", shape=[fan_out, fan_in], dtype="float32")],
    )


def attach_request(job_id: str, session_id: str = "") -> worker_service_pb2.AttachRequest:
    return worker_service_pb2.AttachRequest(
        job_id=job_id,
        world_size=1,
        ranks=[job_pb2.RankInfo(rank=0, hostname="localhost", pid=1, device="cpu")],
        modules=[_linear(f"enc.fc{i}", 16, 16) for i in range(3)] + [_linear("head", 16, 4)],
        regions=[job_pb2.Region(name="enc", patterns=["enc.*"]), job_pb2.Region(name="head", patterns=["head"])],
        capabilities=job_pb2.WorkerCapabilities(protocol_version=1, blueprints=["lora", "dense_delta"]),
        session_id=session_id,
    )


def scaffold_report(scaffold_id: str, module: str) -> telemetry_pb2.ScaffoldReport:
    return telemetry_pb2.ScaffoldReport(
        scaffold_id=scaffold_id,
        module=module,
        stage=telemetry_pb2.SCAFFOLD_STAGE_HOLD,
        alpha=0.5,
        age_ckpts=1,
        ttl_ckpts=12,
        gates=telemetry_pb2.GateTelemetry(foldability=0.99, jitter_p95=0.01, drift=0.01, step_time_ratio=1.0),
    )


@dataclass
class Figures:
    """What a campaign did and found."""

    cases: int = 0
    random_bytes: int = 0
    mutated: int = 0
    statuses: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    refused: int = 0
    accepted_changes: int = 0  # accepted requests after which a table differed
    unknown: int = 0
    internal: int = 0
    unexplained: int = 0  # a non-OK status with no Narset reason code (and not over the size limit)
    state_changes: int = 0  # refused requests after which a table other than the audit log differed
    crashes: int = 0
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_end_mib: float = 0.0
    seconds: float = 0.0

    @property
    def violations(self) -> int:
        return self.unknown + self.internal + self.unexplained + self.state_changes + self.crashes


class Campaign:
    """A live `narset serve` with two attached jobs, and the oracle every fuzz case is checked by."""

    def __init__(self, workdir: Path, tokens: bool = False) -> None:
        self.db_path = workdir / "narset.db"
        self.tokens = tokens
        config = _token_settings(workdir / "narset.toml") if tokens else None
        self.server = ServeProcess(self.db_path, log_level="error", config=config)
        self.channel = grpc.insecure_channel(
            self.server.address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.figures = Figures()
        self.sessions: dict[str, str] = {}
        self.boundaries = dict.fromkeys(JOBS, 0)
        self._seed_state()
        self._db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        self._digested: tuple[int, str] = (-1, "")
        self.figures.rss_start_mib = rss_kib(self.server.pid)[0] / 1024

    def close(self) -> None:
        self._db.close()
        self.channel.close()
        self.server.kill()

    def call(
        self, method: str, payload: bytes, caller: str | None = "root"
    ) -> tuple[grpc.StatusCode, grpc.RpcError | None, bytes]:
        """Send `payload` as the request of `method`, as `caller` (with --tokens); (status, the error if any,
        the raw answer)."""
        descriptor = METHODS[method]
        metadata = (("authorization", f"Bearer {caller}-token"),) if self.tokens and caller else ()
        try:
            if descriptor.server_streaming:
                answer = b"".join(self.channel.unary_stream(method)(payload, timeout=30, metadata=metadata))
            else:
                answer = self.channel.unary_unary(method)(payload, timeout=30, metadata=metadata)
        except grpc.RpcError as error:
            return error.code(), error, b""
        return grpc.StatusCode.OK, None, answer

    def _ok(self, method: str, request: Message) -> bytes:
        code, error, answer = self.call(method, request.SerializeToString())
        if error is not None:
            raise RuntimeError(f"seeding {method} failed: {code.name} {error.details()}")
        return answer

    def _seed_state(self) -> None:
        """Both jobs attached; on fuzz-a a live scaffold and decisions, on fuzz-b a pending deploy."""
        worker, operator = SERVICES[0].full_name, SERVICES[1].full_name
        for job in JOBS:
            answer = self._ok(f"/{worker}/Attach", attach_request(job))
            self.sessions[job] = worker_service_pb2.AttachResponse.FromString(answer).session_id
        for job, command_id, module in (("fuzz-a", "sc-a", "enc.fc0"), ("fuzz-b", "sc-b", "enc.fc1")):
            command = command_pb2.AdaptationCommand(job_id=job, command_id=command_id)
            command.deploy.module, command.deploy.blueprint = module, "lora"
            self._ok(f"/{operator}/SubmitCommand", operator_service_pb2.SubmitCommandRequest(command=command))
        applied = telemetry_pb2.CommandResult(command_id="sc-a", outcome=telemetry_pb2.COMMAND_OUTCOME_APPLIED)
        for results, scaffolds in (([], []), ([applied], [scaffold_report("sc-a", "enc.fc0")])):
            self._ok(f"/{worker}/ReportBoundary", self.report_request("fuzz-a", results=results, scaffolds=scaffolds))
            self.boundaries["fuzz-a"] += 1

    def report_request(self, job: str, **fields) -> worker_service_pb2.ReportBoundaryRequest:
        boundary = self.boundaries[job] + 1
        return worker_service_pb2.ReportBoundaryRequest(
            job_id=job, session_id=self.sessions[job], boundary=boundary, step=10 * boundary, probe_loss=1.0, **fields
        )

    def valid_request(self, method: str, job: str) -> Message:
        """A request of `method` that the current state accepts (or refuses for a reason of the state)."""
        name = METHODS[method].name
        if name == "Attach":
            return attach_request(job, self.sessions[job])
        if name == "ReportBoundary":
            return self.report_request(
                job,
                metrics={"val_loss": 0.9},
                scaffolds=[scaffold_report("sc-a", "enc.fc0")] if job == "fuzz-a" else [],
                region_signals=[telemetry_pb2.RegionSignal(region="enc", grad_norm=0.1, update_ratio=1e-3)],
                safety_events=[telemetry_pb2.SafetyEvent(scaffold_id="sc-a", kind="loss_spike", step=5)],
                step_time_ms=2.0,
            )
        if name == "Detach":
            return worker_service_pb2.DetachRequest(job_id=job, session_id=self.sessions[job], reason="done")
        if name == "SubmitCommand":
            command = command_pb2.AdaptationCommand(job_id=job, reason="fuzz")
            command.deploy.module, command.deploy.blueprint = "enc.fc2", "lora"
            command.deploy.blueprint_params["rank"] = 4
            return operator_service_pb2.SubmitCommandRequest(command=command)
        request = GetMessageClass(METHODS[method].input_type)()
        for key, value in (("job_id", job), ("scaffold_id", f"sc-{job[-1]}"), ("limit", 10)):
            if key in request.DESCRIPTOR.fields_by_name:
                setattr(request, key, value)
        return request

    def digest(self) -> str:
        """SHA-256 of every table but the audit log, rows in a canonical order."""
        # data_version moves only when another connection (the server) commits: most refusals write nothing.
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._digested[0]:
            self._digested = (version, self._hash_tables())
        return self._digested[1]

    def _hash_tables(self) -> str:
        tables = [
            row[0]
            for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            if row[0] not in AUDITED and not row[0].startswith("sqlite_")
        ]
        digest = hashlib.sha256()
        for table in tables:
            digest.update(table.encode())
            for row in sorted(repr(r) for r in self._db.execute(f'SELECT * FROM "{table}"')):
                digest.update(row.encode())
        return digest.hexdigest()

    def check(self, method: str, payload: bytes, request: Message | None, caller: str | None = "root") -> None:
        """Send one case and hold the server to the campaign's properties; AssertionError on a violation."""
        figures = self.figures
        before = self.digest()
        code, error, answer = self.call(method, payload, caller)
        figures.cases += 1
        figures.methods[METHODS[method].name] += 1
        figures.statuses[code.name] += 1
        if self.server.process.poll() is not None:
            figures.crashes += 1
            raise AssertionError(f"narset serve exited with {self.server.process.returncode} on {method}")
        if code == grpc.StatusCode.OK:
            self._learn(method, request, answer)
            figures.accepted_changes += self.digest() != before  # the oracle sees what does change
            return
        figures.refused += 1
        try:
            reason, _ = read_reason(rpc_status.from_call(error))
        except ValueError:  # details of another code: the client replaced the status (e.g. trailers too big)
            reason = ""
        over_limit = code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(payload) > MAX_MESSAGE_BYTES
        if code == grpc.StatusCode.UNKNOWN:
            figures.unknown += 1
        elif code == grpc.StatusCode.INTERNAL:
            figures.internal += 1
        elif reason not in REASONS and not over_limit:
            figures.unexplained += 1
        else:
            if self.digest() == before:
                return
            figures.state_changes += 1
            raise AssertionError(f"refused {method} ({code.name} {reason}) changed the store")
        raise AssertionError(f"{method} answered {code.name} without a Narset reason: {error.details()[:300]}")

    def _learn(self, method: str, request: Message | None, answer: bytes) -> None:
        """Follow what an accepted request changed: a new session, the next boundary."""
        name = METHODS[method].name
        if name == "Attach":
            response = worker_service_pb2.AttachResponse.FromString(answer)
            if request is not None and request.job_id in self.sessions:
                self.sessions[request.job_id] = response.session_id
                self.boundaries[request.job_id] = response.next_boundary - 1
        elif name == "ReportBoundary" and request is not None and request.job_id in self.boundaries:
            self.boundaries[request.job_id] = max(self.boundaries[request.job_id], request.boundary)


# strategies ------------------------------------------------------------------------------------------


def _strings(campaign: Campaign) -> st.SearchStrategy[str]:
    known = [*JOBS, *campaign.sessions.values(), "sc-a", "sc-b", "enc.fc0", "head", "lora", "narset:gates"]
    odd = ["", "\x1b[2J\x1b[31mred", "a\x00b", "é" * 2049, "x" * 129, "y" * 4097, "z" * 1_000_000, "sc-a.prune.b3"]
    return st.one_of(st.sampled_from(known + odd), st.text(max_size=40))


def _scalar(draw, campaign: Campaign, descriptor: FieldDescriptor) -> object:
    kind = descriptor.type
    if kind == _F.TYPE_ENUM:
        known = [v.number for v in descriptor.enum_type.values]
        return draw(st.sampled_from([*known, 99, -1, 2**31 - 1]))
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return draw(st.one_of(st.sampled_from(_FLOATS), st.floats(width=32 if kind == _F.TYPE_FLOAT else 64)))
    if kind == _F.TYPE_BOOL:
        return draw(st.booleans())
    if kind == _F.TYPE_STRING:
        return draw(_strings(campaign))
    if kind == _F.TYPE_BYTES:
        return draw(st.binary(max_size=64))
    bits = 32 if kind in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32) else 64
    extremes = _INT_EXTREMES[_F.TYPE_INT32 if bits == 32 else _F.TYPE_INT64]
    return draw(st.one_of(st.sampled_from(extremes), st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)))


def _mutate(draw, campaign: Campaign, message: Message) -> None:
    """Set one field of `message`, or of a message inside it, to a drawn value."""
    fields = list(message.DESCRIPTOR.fields)
    if not fields:
        return
    descriptor = draw(st.sampled_from(fields))
    target = getattr(message, descriptor.name)
    is_map = descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry
    if is_map or descriptor.is_repeated:
        # Many entries are plain ones (a 1 MB string ten thousand times is a client's problem, not a case).
        count = draw(st.sampled_from([1, 2, 100, 10_001]))
        if is_map:
            _fill_map(draw, campaign, descriptor, target, count)
        elif descriptor.message_type is not None:
            item = GetMessageClass(descriptor.message_type)()
            if count <= 2:
                _mutate(draw, campaign, item)
            target.extend([item] * count)
        else:
            value = _scalar(draw, campaign, descriptor)
            target.extend([value[:64] if isinstance(value, str) and count > 2 else value] * count)
    elif descriptor.message_type is not None:
        _mutate(draw, campaign, target)
    else:
        setattr(message, descriptor.name, _scalar(draw, campaign, descriptor))


def _fill_map(draw, campaign: Campaign, descriptor: FieldDescriptor, target, count: int) -> None:
    key_field, value_field = (descriptor.message_type.fields_by_name[n] for n in ("key", "value"))
    if value_field.message_type is not None:
        return  # no request has a map of messages
    if count <= 2:
        for _ in range(count):
            target[_scalar(draw, campaign, key_field)] = _scalar(draw, campaign, value_field)
    else:
        value = _scalar(draw, campaign, value_field)
        target.update({f"k{i}": value for i in range(count)})


def _token_settings(path: Path) -> Path:
    """A narset.toml accepting PEOPLE's tokens."""
    entries = [
        f'[[tokens]]\nname = "{name}"\nrole = "{role}"\njobs = {json.dumps(jobs)}\n'
        f'sha256 = "{digest(f"{name}-token")}"\n'
        for name, (role, jobs) in PEOPLE.items()
    ]
    path.write_text("\n".join(entries))
    return path


@st.composite
def cases(draw, campaign: Campaign) -> tuple[str, bytes, Message | None, str | None]:
    """(method, request bytes, the request if it is a message, the caller): random bytes or a mutated
    valid request, from a caller drawn among CALLERS with --tokens."""
    method = draw(st.sampled_from(sorted(METHODS)))
    caller = draw(st.sampled_from(CALLERS)) if campaign.tokens else None
    if draw(st.integers(0, 3)) == 0:
        return method, draw(st.binary(max_size=512)), None, caller
    request = campaign.valid_request(method, draw(st.sampled_from(JOBS)))
    for _ in range(draw(st.integers(1, 3))):
        _mutate(draw, campaign, request)
    if METHODS[method].name == "WatchEvents":
        request.follow = False  # a following stream never ends by design; the replay is what is fuzzed
    return method, request.SerializeToString(), request, caller


def run(cases_wanted: int, workdir: Path, seed: int | None = None, tokens: bool = False) -> Figures:
    """Run `cases_wanted` cases (derandomized unless `seed` is given; with bearer tokens if `tokens`) and
    return the figures."""
    campaign = Campaign(workdir, tokens)
    started = time.monotonic()

    @settings(
        max_examples=cases_wanted,
        deadline=None,
        derandomize=seed is None,
        database=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(campaign))
    def one(case: tuple[str, bytes, Message | None, str | None]) -> None:
        method, payload, request, caller = case
        if request is None:
            campaign.figures.random_bytes += 1
        else:
            campaign.figures.mutated += 1
        campaign.check(method, payload, request, caller)

    try:
        (one if seed is None else hypothesis_seed(seed)(one))()
    finally:
        figures = campaign.figures
        figures.seconds = time.monotonic() - started
        if campaign.server.process.poll() is None:
            current, peak = rss_kib(campaign.server.pid)
            figures.rss_end_mib, figures.rss_peak_mib = current / 1024, peak / 1024
        campaign.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None, help="a random seed (default: derandomized)")
    parser.add_argument("--tokens", action="store_true", help="Narset with bearer tokens; cases from any caller")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # A violation raises, with hypothesis's shrunk case.
        figures = run(args.cases, Path(tmp), args.seed, args.tokens)
    if args.json:
        print(json.dumps(asdict(figures) | {"violations": figures.violations}))
        return 0
    print(
        f"{figures.cases} cases in {figures.seconds:.0f} s ({figures.random_bytes} random bytes, {figures.mutated} "
        f"mutated requests) over {len(figures.methods)} methods\n"
        f"statuses: {dict(figures.statuses.most_common())}\n"
        f"UNKNOWN {figures.unknown}, INTERNAL {figures.internal}, without a reason {figures.unexplained}, "
        f"crashes {figures.crashes}, refused requests that changed a table {figures.state_changes} "
        f"(of {figures.refused} refused; {figures.accepted_changes} accepted ones did)\n"
        f"server RSS: {figures.rss_start_mib:.0f} MiB at the start, peak {figures.rss_peak_mib:.0f} MiB, "
        f"{figures.rss_end_mib:.0f} MiB at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
