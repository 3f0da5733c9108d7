"""Output of the `narset` CLI: aligned text tables for people, JSON documents for scripts.

Names, ids and reasons come from jobs and clients Narset does not control: every text printed for
people goes through `escaped`, so that none can move the cursor, clear the screen, retitle the
terminal or reverse the text around it (JSON escapes control characters itself).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from narset.contract.rules import raised_flags
from narset.contract.stages import stage_name
from narset.v1 import command_pb2, job_pb2, operator_service_pb2, telemetry_pb2

__all__ = [
    "AUDIT_HEADERS",
    "COMMAND_HEADERS",
    "DECISION_HEADERS",
    "JOB_HEADERS",
    "SCAFFOLD_HEADERS",
    "audit_row",
    "command_row",
    "decision_row",
    "emit_json",
    "enum_label",
    "escaped",
    "event_line",
    "gate_summary",
    "job_rows",
    "print_table",
    "scaffold_row",
    "stage_name",
    "to_dict",
]


def escaped(text: str) -> str:
    """`text` with each control, format or separator character other than a space (ESC, BEL, CR, line
    breaks, bidirectional overrides...) shown as its Python escape (`\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def to_dict(message: Message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def emit_json(document: object) -> None:
    def default(value: object) -> object:
        if isinstance(value, Message):
            return to_dict(value)
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    json.dump(document, sys.stdout, indent=2, default=default, sort_keys=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str = "(none)") -> None:
    if not rows:
        print(empty)
        return
    cells = [[str(c) for c in headers]] + [["" if c is None else escaped(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def enum_label(enum_type, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix)


def _when(timestamp) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return dt.datetime.fromtimestamp(timestamp.seconds, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def gate_summary(gates: telemetry_pb2.GateTelemetry) -> str:
    """Compact one-cell view of the measured gates; unmeasured ones are omitted."""
    parts = [
        f"{label}={_fmt(getattr(gates, name))}"
        for label, name in (
            ("G1", "transfer_rel_delta"),
            ("G3", "foldability"),
            ("jit", "jitter_p95"),
            ("drift", "drift"),
            ("div", "diversity"),
            ("G5t", "step_time_ratio"),
            ("G5m", "memory_fraction"),
        )
        if gates.HasField(name)
    ]
    return " ".join([*parts, *raised_flags(gates)]) or "unmeasured"


def command_row(record: command_pb2.CommandRecord) -> list[object]:
    command = record.command
    action = command.WhichOneof("action") or ""
    detail = ""
    if action == "deploy":
        detail = f"{command.deploy.blueprint} on {command.deploy.module}"
    elif action == "persist":
        detail = f"+{command.persist.extra_ckpts}"
    return [
        command.command_id,
        action,
        record.scaffold_id,
        detail,
        enum_label(command_pb2.CommandState, record.state, "COMMAND_STATE_"),
        record.delivered_boundary or "",
        record.applied_boundary or "",
        command.issued_by + (" (forced)" if record.forced else ""),
        record.result_message,
    ]


COMMAND_HEADERS = ["COMMAND", "ACTION", "SCAFFOLD", "DETAIL", "STATE", "DELIVERED@", "APPLIED@", "ISSUED BY", "RESULT"]


def scaffold_row(scaffold: job_pb2.Scaffold) -> list[object]:
    return [
        scaffold.scaffold_id,
        scaffold.module,
        scaffold.blueprint,
        scaffold.region,
        stage_name(scaffold.stage),
        f"{scaffold.alpha:.4f}",
        f"{scaffold.age_ckpts}/{scaffold.ttl_ckpts}",
        scaffold.extensions,
        gate_summary(scaffold.gates),
    ]


SCAFFOLD_HEADERS = ["SCAFFOLD", "MODULE", "BLUEPRINT", "REGION", "STAGE", "ALPHA", "AGE/TTL", "EXT", "GATES"]


def decision_row(decision: telemetry_pb2.Decision) -> list[object]:
    return [
        decision.boundary,
        decision.scaffold_id,
        enum_label(telemetry_pb2.DecisionOutcome, decision.outcome, "DECISION_OUTCOME_"),
        decision.issued_by + (" (forced)" if decision.forced else ""),
        " ".join(
            f"{v.gate}:{'ok' if v.passed else 'FAIL'}({_fmt(v.value if v.HasField('value') else None)})"
            for v in decision.verdicts
        ),
        decision.reason,
    ]


DECISION_HEADERS = ["BOUNDARY", "SCAFFOLD", "OUTCOME", "BY", "GATES", "REASON"]


def event_line(event: job_pb2.Event) -> str:
    kind = enum_label(job_pb2.EventKind, event.kind, "EVENT_KIND_")
    return escaped(f"{event.sequence:>6}  {_when(event.created_at)}  {event.job_id}  {kind:<18} {event.message}")


def job_rows(jobs: Sequence[job_pb2.Job]) -> list[list[object]]:
    return [
        [
            job.job_id,
            enum_label(job_pb2.JobState, job.state, "JOB_STATE_"),
            job.world_size,
            job.last_boundary,
            job.last_step,
            _fmt(job.last_probe_loss if job.HasField("last_probe_loss") else None),
            job.live_scaffolds,
            job.module_count,
            _when(job.last_seen_at),
        ]
        for job in jobs
    ]


JOB_HEADERS = ["JOB", "STATE", "RANKS", "BOUNDARY", "STEP", "PROBE LOSS", "LIVE", "MODULES", "LAST SEEN (UTC)"]


def audit_row(entry: operator_service_pb2.AuditEntry) -> list[object]:
    """One `narset audit` row of an `AuditEntry`."""
    return [
        entry.sequence,
        _when(entry.at),
        entry.principal or "-",
        entry.role or "-",
        entry.peer,
        entry.method,
        entry.job_id,
        entry.command_id,
        entry.outcome,
        entry.reason,
        entry.detail,
    ]


AUDIT_HEADERS = ["SEQ", "AT (UTC)", "WHO", "ROLE", "PEER", "METHOD", "JOB", "COMMAND", "OUTCOME", "REASON", "DETAIL"]
