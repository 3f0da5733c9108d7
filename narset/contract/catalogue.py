"""The built-in blueprint catalogue (docs/design.md, section 4) and the fit check of a blueprint to a host.

Pure data and pure functions over the contract messages: Narset serves and validates against it,
Kasmina builds seeds for exactly these names and parameters.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

from narset.contract.scaffold_policy import FieldError
from narset.v1 import command_pb2, job_pb2

__all__ = [
    "ANY_HOST_TYPE",
    "BUILTIN_BLUEPRINTS",
    "blueprint_fit_errors",
    "blueprint_param_values",
    "region_for_module",
]

ANY_HOST_TYPE = "*"


def _param(name: str, default: float, lo: float, hi: float, integer: bool, description: str):
    return job_pb2.BlueprintParam(
        name=name, default_value=default, min=lo, max=hi, integer=integer, description=description
    )


def _schedule(warmup: int, hold: int, decay: int, curve=command_pb2.ALPHA_CURVE_LINEAR):
    return command_pb2.AlphaSchedule(warmup_ckpts=warmup, hold_ckpts=hold, decay_ckpts=decay, curve=curve)


_DELTA_POLICY = command_pb2.ScaffoldPolicy(
    # Delta seeds fold exactly at any alpha, so they skip weaning and fold the warm-level delta.
    ttl_ckpts=12,
    schedule=_schedule(2, 10, 0),
    exit_policy=command_pb2.EXIT_POLICY_PREFER_FUSE,
)

BUILTIN_BLUEPRINTS: tuple[job_pb2.Blueprint, ...] = (
    job_pb2.Blueprint(
        name="lora",
        description="Low-rank delta B·A·x·scaling on a linear layer; folds exactly at any alpha.",
        host_types=["Linear", "Conv1D"],
        size_class=job_pb2.SIZE_CLASS_MICRO,
        folds=[job_pb2.FOLD_KIND_LORA],
        default_policy=_DELTA_POLICY,
        params=[
            _param("rank", 8, 1, 4096, True, "rank r of A [r, in] and B [out, r]"),
            _param("scaling", 1.0, 1e-6, 1e6, False, "multiplier of B·A"),
        ],
    ),
    job_pb2.Blueprint(
        name="dense_delta",
        description="Dense delta D·x + d on a linear layer; folds exactly at any alpha.",
        host_types=["Linear"],
        size_class=job_pb2.SIZE_CLASS_MESO,
        folds=[job_pb2.FOLD_KIND_LINEAR],
        default_policy=command_pb2.ScaffoldPolicy(
            ttl_ckpts=12,
            schedule=_schedule(2, 10, 0),
            exit_policy=command_pb2.EXIT_POLICY_PREFER_FUSE,
            fold=command_pb2.FoldOptions(svd_rank=8),
        ),
        params=[_param("bias", 1, 0, 1, True, "1: learn a bias delta d as well")],
    ),
    job_pb2.Blueprint(
        name="residual_mlp",
        description="Non-linear MLP seed in parallel with the host; teaches the host, leaves at alpha 0.",
        host_types=[ANY_HOST_TYPE],
        size_class=job_pb2.SIZE_CLASS_MESO,
        folds=[job_pb2.FOLD_KIND_TRANSFER],
        default_policy=command_pb2.ScaffoldPolicy(
            ttl_ckpts=12,
            schedule=_schedule(2, 3, 7),
            exit_policy=command_pb2.EXIT_POLICY_PREFER_FUSE,
            teaching=command_pb2.TeachingLosses(site_distill_weight=1.0),
        ),
        params=[_param("hidden", 64, 1, 65536, True, "hidden width of the seed MLP")],
    ),
    job_pb2.Blueprint(
        name="moe_expert",
        description="A new expert and router row on a mixture-of-experts layer; router fold appends them.",
        host_types=[ANY_HOST_TYPE],
        required_traits=["moe"],
        size_class=job_pb2.SIZE_CLASS_MACRO,
        folds=[job_pb2.FOLD_KIND_ROUTER],
        default_policy=command_pb2.ScaffoldPolicy(
            ttl_ckpts=12,
            schedule=_schedule(2, 10, 0),
            exit_policy=command_pb2.EXIT_POLICY_PREFER_FUSE,
        ),
        params=[_param("hidden", 0, 0, 65536, True, "expert hidden width; 0: as the host's experts")],
    ),
)


def blueprint_param_values(blueprint: job_pb2.Blueprint, given: Mapping[str, float]) -> dict[str, float]:
    """Blueprint parameters with defaults filled in (assumes `blueprint_fit_errors` found none)."""
    values = {p.name: p.default_value for p in blueprint.params}
    values.update(given)
    return values


def blueprint_fit_errors(
    blueprint: job_pb2.Blueprint, module: job_pb2.ModuleInfo, params: Mapping[str, float]
) -> list[FieldError]:
    """Why `blueprint` cannot be built on `module` with `params`; empty when it fits."""
    errors: list[FieldError] = []
    known = {p.name: p for p in blueprint.params}
    for name, value in params.items():
        spec = known.get(name)
        if spec is None:
            errors.append(
                FieldError(
                    f"deploy.blueprint_params.{name}",
                    f"blueprint '{blueprint.name}' has no parameter '{name}' (known: {', '.join(known) or 'none'})",
                )
            )
        elif not math.isfinite(value) or not spec.min <= value <= spec.max:
            errors.append(
                FieldError(f"deploy.blueprint_params.{name}", f"must be in [{spec.min:g}, {spec.max:g}], got {value}")
            )
        elif spec.integer and value != int(value):
            errors.append(FieldError(f"deploy.blueprint_params.{name}", f"must be an integer, got {value}"))
    if ANY_HOST_TYPE not in blueprint.host_types and module.type not in blueprint.host_types:
        errors.append(
            FieldError(
                "deploy.blueprint",
                f"blueprint '{blueprint.name}' attaches to {'/'.join(blueprint.host_types)}, "
                f"but module '{module.name}' is a {module.type}",
            )
        )
    missing = [t for t in blueprint.required_traits if t not in module.traits]
    if missing:
        errors.append(
            FieldError(
                "deploy.blueprint",
                f"blueprint '{blueprint.name}' needs a module with trait(s) {', '.join(missing)}; "
                f"module '{module.name}' ({module.type}) has {', '.join(module.traits) or 'none'}",
            )
        )
    if not module.HasField("in_features") or not module.HasField("out_features"):
        errors.append(
            FieldError(
                "deploy.module",
                f"module '{module.name}' ({module.type}) has no known input/output feature sizes, "
                f"which blueprint '{blueprint.name}' needs",
            )
        )
    elif blueprint.name == "lora" and not errors:
        rank = blueprint_param_values(blueprint, params)["rank"]
        limit = min(module.in_features, module.out_features)
        if rank > limit:
            errors.append(
                FieldError(
                    "deploy.blueprint_params.rank",
                    f"rank {int(rank)} exceeds min(in_features, out_features) = {limit} of module '{module.name}'",
                )
            )
    return errors


def region_for_module(regions: Iterable[job_pb2.Region], module: str) -> str | None:
    """The first region whose glob patterns match the qualified module name."""
    for region in regions:
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in region.patterns):
            return region.name
    return None
