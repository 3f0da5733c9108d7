"""The worker's checkpoint state: a versioned manifest of primitives and tensors only.

Loadable with `torch.load(path, weights_only=True)`. Protobuf messages are stored as their wire
bytes. Each live scaffold's entry carries its seed's tensors (`seed_state`): the model's own
state_dict holds only the host's, under their original names (kasmina_worker/seeds/scaffold.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kasmina_worker.seeds.fold import FoldRecord
from narset.v1 import telemetry_pb2

__all__ = ["STATE_VERSION", "LoadedState", "build_state", "parse_state"]

STATE_VERSION = 2


def build_state(
    *,
    job: str,
    boundary: int,
    steps: int,
    applied: Sequence[str],
    scaffolds: list[dict],
    folds: list[dict],
    growth: list[dict],
    group_order: list[str],
    ring: dict,
    queue: dict,
    unreported_results: Sequence[telemetry_pb2.CommandResult],
    unreported_reports: Sequence[telemetry_pb2.ScaffoldReport],
) -> dict:
    """Assemble the manifest."""
    return {
        "version": STATE_VERSION,
        "job": job,
        "boundary": boundary,
        "steps": steps,
        "applied_command_ids": list(applied),
        "scaffolds": scaffolds,
        "folds": folds,
        "growth": [dict(g) for g in growth],
        "optimizer_group_order": list(group_order),
        "ring": ring,
        "queue": queue,
        "unreported_results": [r.SerializeToString() for r in unreported_results],
        "unreported_reports": [r.SerializeToString() for r in unreported_reports],
    }


@dataclass(frozen=True, slots=True)
class LoadedState:
    """A checked manifest, ready to rebuild from."""

    boundary: int
    steps: int
    applied: tuple[str, ...]
    scaffolds: tuple[dict, ...]
    folds: list[FoldRecord]
    growth: list[dict]
    group_order: tuple[str, ...]
    ring: dict
    queue: dict
    unreported_results: tuple[telemetry_pb2.CommandResult, ...]
    unreported_reports: tuple[telemetry_pb2.ScaffoldReport, ...]

    def scaffolds_in_group_order(self) -> list[dict]:
        """Live scaffolds in the order their groups had in the optimiser (others after)."""
        rank = {sid: i for i, sid in enumerate(self.group_order)}
        return sorted(self.scaffolds, key=lambda e: rank.get(e["scaffold_id"], len(rank)))


def parse_state(state: Mapping, job: str) -> LoadedState:
    """Check version and job and decode the manifest; raises ValueError naming the bad key."""
    version = state.get("version")
    if version != STATE_VERSION:
        raise ValueError(f"state 'version' must be {STATE_VERSION}, got {version!r}")
    if state.get("job") != job:
        raise ValueError(f"state 'job' is {state.get('job')!r}, this worker runs {job!r}")
    return LoadedState(
        boundary=int(state["boundary"]),
        steps=int(state["steps"]),
        applied=tuple(state["applied_command_ids"]),
        scaffolds=tuple(state["scaffolds"]),
        folds=[FoldRecord.from_dict(f) for f in state["folds"]],
        growth=[dict(g) for g in state["growth"]],
        group_order=tuple(state["optimizer_group_order"]),
        ring=state["ring"],
        queue=state["queue"],
        unreported_results=tuple(telemetry_pb2.CommandResult.FromString(b) for b in state["unreported_results"]),
        unreported_reports=tuple(telemetry_pb2.ScaffoldReport.FromString(b) for b in state["unreported_reports"]),
    )
