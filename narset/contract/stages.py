"""Groupings of scaffold stages that Narset's rules are written in."""

from __future__ import annotations

from narset.v1 import telemetry_pb2

__all__ = ["LIVE_STAGES", "OCCUPYING_STAGES", "stage_name"]

_S = telemetry_pb2

# A live scaffold counts against the job's budgets and can be folded, pruned, persisted, paused.
LIVE_STAGES = frozenset(
    {
        _S.SCAFFOLD_STAGE_PENDING,
        _S.SCAFFOLD_STAGE_TRAIN_ISOLATED,
        _S.SCAFFOLD_STAGE_GRAFTING,
        _S.SCAFFOLD_STAGE_HOLD,
        _S.SCAFFOLD_STAGE_DECAY,
        _S.SCAFFOLD_STAGE_EVALUATING,
        _S.SCAFFOLD_STAGE_SUNSET,
    }
)
# A module holding one of these has a seed on it already: no second deploy there.
OCCUPYING_STAGES = LIVE_STAGES | {_S.SCAFFOLD_STAGE_PERMANENT}


def stage_name(stage: int) -> str:
    """`SCAFFOLD_STAGE_GRAFTING` -> `GRAFTING`; `UNKNOWN(99)` for a value stored before reports were checked."""
    value = telemetry_pb2.ScaffoldStage.DESCRIPTOR.values_by_number.get(stage)
    return value.name.removeprefix("SCAFFOLD_STAGE_") if value is not None else f"UNKNOWN({stage})"
