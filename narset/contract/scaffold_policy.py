"""Effective scaffold policies: blueprint defaults merged with a command's overrides, and their checks.

Both sides of the wire use this module: Narset validates a deploy at submit time, and Kasmina
resolves the same effective policy when it applies the deploy, so the two never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from narset.v1 import command_pb2, job_pb2

__all__ = [
    "DEFAULT_GATES",
    "WARM_LEVEL_BY_SIZE",
    "FieldError",
    "effective_policy",
    "policy_errors",
]

# docs/design.md, section 4: warm level by size class.
WARM_LEVEL_BY_SIZE = {
    job_pb2.SIZE_CLASS_MICRO: 0.5,
    job_pb2.SIZE_CLASS_MESO: 0.25,
    job_pb2.SIZE_CLASS_MACRO: 0.1,
}

# docs/design.md, section 5 defaults.
DEFAULT_GATES = command_pb2.GateThresholds(
    transfer_epsilon=0.01,
    residual_gain_gamma=0.001,
    foldability_theta=0.9,
    jitter_p95_max=0.05,
    drift_max=0.05,
    diversity_min=0.6,
    step_time_ratio_max=1.5,
    memory_fraction_max=0.9,
)

MAX_TTL_CKPTS = 10_000


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: its dotted path in the command and why it is refused."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def _merge_optional_fields(target, override) -> None:
    """Copy every field that is set in `override` onto `target`, recursing into sub-messages."""
    for descriptor, value in override.ListFields():
        if descriptor.is_repeated:
            field = getattr(target, descriptor.name)
            del field[:]
            field.extend(value)
        elif descriptor.message_type is not None:
            _merge_optional_fields(getattr(target, descriptor.name), value)
        else:
            setattr(target, descriptor.name, value)


def effective_policy(blueprint: job_pb2.Blueprint, override: command_pb2.ScaffoldPolicy) -> command_pb2.ScaffoldPolicy:
    """The policy a scaffold runs under: gate defaults < blueprint defaults < the command's fields.

    Fields left unset everywhere are filled so that the result is complete: the warm level from
    the blueprint's size class, and a TTL that covers the schedule when neither side sets one.
    """
    policy = command_pb2.ScaffoldPolicy()
    policy.gates.CopyFrom(DEFAULT_GATES)
    _merge_optional_fields(policy, blueprint.default_policy)
    _merge_optional_fields(policy, override)
    schedule = policy.schedule
    for name in ("isolated_ckpts", "warmup_ckpts", "hold_ckpts", "decay_ckpts"):
        if not schedule.HasField(name):
            setattr(schedule, name, 0)
    if not schedule.HasField("warm_level"):
        schedule.warm_level = WARM_LEVEL_BY_SIZE.get(blueprint.size_class, 0.25)
    if not schedule.HasField("floor"):
        schedule.floor = 0.0
    if schedule.curve == command_pb2.ALPHA_CURVE_UNSPECIFIED:
        schedule.curve = command_pb2.ALPHA_CURVE_LINEAR
    if not policy.HasField("ttl_ckpts"):
        policy.ttl_ckpts = _schedule_length(schedule)
    if policy.exit_policy == command_pb2.EXIT_POLICY_UNSPECIFIED:
        policy.exit_policy = command_pb2.EXIT_POLICY_PREFER_FUSE
    fold = policy.fold
    if not fold.HasField("foldable"):
        fold.foldable = any(k != job_pb2.FOLD_KIND_TRANSFER for k in blueprint.folds)
    if not fold.HasField("sunset_ckpts"):
        fold.sunset_ckpts = 2
    teaching = policy.teaching
    if not teaching.HasField("site_distill_weight"):
        teaching.site_distill_weight = 0.0
    if not teaching.kd.HasField("tau"):
        teaching.kd.tau = 2.0
    if not teaching.feature.HasField("cadence_steps"):
        teaching.feature.cadence_steps = 1
    if not teaching.HasField("probe_weight"):
        teaching.probe_weight = 0.0
    if policy.host_mode == command_pb2.HOST_MODE_UNSPECIFIED:
        policy.host_mode = command_pb2.HOST_MODE_JOINT
    if not policy.HasField("lr_scale"):
        policy.lr_scale = 1.0
    return policy


def _schedule_length(schedule: command_pb2.AlphaSchedule) -> int:
    return schedule.isolated_ckpts + schedule.warmup_ckpts + schedule.hold_ckpts + schedule.decay_ckpts


def _unit_interval(value: float) -> bool:
    return math.isfinite(value) and 0.0 <= value <= 1.0


def policy_errors(policy: command_pb2.ScaffoldPolicy, prefix: str = "policy") -> list[FieldError]:
    """Every reason an effective policy is malformed, each naming its field; empty when valid."""
    errors: list[FieldError] = []
    schedule = policy.schedule

    def bad(field: str, reason: str) -> None:
        errors.append(FieldError(f"{prefix}.{field}", reason))

    if policy.ttl_ckpts < 1:
        bad("ttl_ckpts", f"must be >= 1, got {policy.ttl_ckpts}")
    elif policy.ttl_ckpts > MAX_TTL_CKPTS:
        bad("ttl_ckpts", f"must be <= {MAX_TTL_CKPTS}, got {policy.ttl_ckpts}")
    for name in ("isolated_ckpts", "warmup_ckpts", "hold_ckpts", "decay_ckpts"):
        value = getattr(schedule, name)
        if value < 0:
            bad(f"schedule.{name}", f"must be >= 0, got {value}")
    if not _unit_interval(schedule.warm_level):
        bad("schedule.warm_level", f"must be in [0, 1], got {schedule.warm_level}")
    if not _unit_interval(schedule.floor):
        bad("schedule.floor", f"must be in [0, 1], got {schedule.floor}")
    elif _unit_interval(schedule.warm_level) and schedule.floor > schedule.warm_level:
        bad("schedule.floor", f"must be <= warm_level {schedule.warm_level}, got {schedule.floor}")
    length = _schedule_length(schedule)
    if policy.ttl_ckpts >= 1 and length > policy.ttl_ckpts:
        bad(
            "ttl_ckpts",
            f"isolated + warmup + hold + decay = {length} exceeds ttl_ckpts {policy.ttl_ckpts}",
        )
    teaching = policy.teaching
    for name, value in (
        ("teaching.site_distill_weight", teaching.site_distill_weight),
        ("teaching.kd.weight", teaching.kd.weight),
        ("teaching.feature.weight", teaching.feature.weight),
        ("teaching.probe_weight", teaching.probe_weight),
    ):
        if not (math.isfinite(value) and value >= 0.0):
            bad(name, f"must be a finite number >= 0, got {value}")
    if not (math.isfinite(teaching.kd.tau) and teaching.kd.tau > 0.0):
        bad("teaching.kd.tau", f"must be > 0, got {teaching.kd.tau}")
    if teaching.feature.cadence_steps < 1:
        bad("teaching.feature.cadence_steps", f"must be >= 1, got {teaching.feature.cadence_steps}")
    if teaching.feature.weight > 0 and not teaching.feature.taps:
        bad("teaching.feature.taps", "must name at least one module when teaching.feature.weight > 0")
    if policy.fold.sunset_ckpts < 0:
        bad("fold.sunset_ckpts", f"must be >= 0, got {policy.fold.sunset_ckpts}")
    if policy.fold.HasField("svd_rank") and policy.fold.svd_rank < 1:
        bad("fold.svd_rank", f"must be >= 1, got {policy.fold.svd_rank}")
    if policy.host_mode not in (command_pb2.HOST_MODE_JOINT, command_pb2.HOST_MODE_FROZEN):
        bad("host_mode", f"must be HOST_MODE_JOINT or HOST_MODE_FROZEN, got {policy.host_mode}")
    if not (math.isfinite(policy.lr_scale) and policy.lr_scale > 0.0):
        bad("lr_scale", f"must be a finite number > 0, got {policy.lr_scale}")
    for descriptor, value in policy.gates.ListFields():
        if not math.isfinite(value):
            bad(f"gates.{descriptor.name}", f"must be finite, got {value}")
    for name in ("foldability_theta", "diversity_min", "memory_fraction_max"):
        value = getattr(policy.gates, name)
        if math.isfinite(value) and not _unit_interval(value):
            bad(f"gates.{name}", f"must be in [0, 1], got {value}")
    return errors
