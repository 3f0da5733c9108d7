"""Every rule of the protocol that both planes apply, written once.

Narset checks a command at submit time and Kasmina checks it again when it applies it (the worker
may run without Narset, and a stale Narset may have queued it). Both call the same function here
for the same check, so the two can never disagree on what is allowed.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from narset.contract import reasons
from narset.contract.scaffold_policy import FieldError
from narset.v1 import job_pb2, telemetry_pb2

__all__ = [
    "ANY_HOST_TYPE",
    "CONV_HOST_TYPES",
    "DEFAULT_EXTRA_CKPTS",
    "FOLD_DEPTH",
    "MAX_EXTENSIONS",
    "PADDING_MODES",
    "PROTOCOL_VERSION",
    "SAFETY_FLAGS",
    "TTL_LIMIT_FACTOR",
    "CodedFieldError",
    "blueprint_fit_errors",
    "blueprint_param_errors",
    "blueprint_param_values",
    "blueprint_spec_errors",
    "persist_error",
    "protected_region_error",
    "protocol_error",
    "raised_flags",
    "region_for_module",
    "tied_parameter_error",
    "ttl_limit",
]

# The version of the worker protocol this code speaks; a worker newer than its Narset is refused.
PROTOCOL_VERSION = 1
# PERSIST: at most this many extensions, each of DEFAULT_EXTRA_CKPTS boundaries unless the command
# says otherwise, and never beyond TTL_LIMIT_FACTOR times the original TTL.
MAX_EXTENSIONS = 2
DEFAULT_EXTRA_CKPTS = 3
TTL_LIMIT_FACTOR = 2
# The worker keeps the exact pre-fold host tensors of this many most recent folds: the rollback depth.
FOLD_DEPTH = 2
# Safety flags a worker raises in a scaffold's gate telemetry; any one prunes at once.
SAFETY_FLAGS = ("non_finite", "loss_spike", "isolation_leak")
# A blueprint whose `host_types` holds this attaches to any module type.
ANY_HOST_TYPE = "*"
# Host types a blueprint is built on by their conv geometry (`ModuleInfo.conv`), not by feature sizes.
CONV_HOST_TYPES = ("Conv2d",)
# The padding modes of torch's Conv2d; the conv seeds pad as their host does.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def protocol_error(version: int) -> FieldError | None:
    """Why a worker speaking protocol `version` cannot attach, or None."""
    if version > PROTOCOL_VERSION:
        return FieldError(
            "capabilities.protocol_version",
            f"worker speaks protocol {version}, this Narset {PROTOCOL_VERSION}",
        )
    return None


def ttl_limit(original_ttl: int) -> int:
    """The longest a scaffold may live, extensions included."""
    return TTL_LIMIT_FACTOR * original_ttl


@dataclass(frozen=True, slots=True)
class CodedFieldError(FieldError):
    """A field a rule refuses, with the reason code (narset.contract.reasons) both planes refuse it under."""

    code: str


def persist_error(extensions: int, ttl: int, original_ttl: int, extra: int) -> CodedFieldError | None:
    """Why extending a scaffold's TTL (now `ttl`, `extensions` times extended) by `extra` is refused: a bad
    `extra` is INVALID_FIELD, one the scaffold's extensions so far leave no room for EXTENSION_LIMIT."""
    if extra < 1:
        return CodedFieldError("persist.extra_ckpts", f"must be >= 1, got {extra}", reasons.INVALID_FIELD)
    if extensions >= MAX_EXTENSIONS:
        return CodedFieldError(
            "persist.scaffold",
            f"already extended {extensions} times (at most {MAX_EXTENSIONS})",
            reasons.EXTENSION_LIMIT,
        )
    limit = ttl_limit(original_ttl)
    if ttl + extra > limit:
        return CodedFieldError(
            "persist.extra_ckpts",
            f"TTL {ttl} + {extra} would exceed {TTL_LIMIT_FACTOR}x the original TTL ({limit})",
            reasons.EXTENSION_LIMIT,
        )
    return None


def region_for_module(regions: Iterable[job_pb2.Region], module: str) -> str | None:
    """The first region whose glob patterns match the qualified module name."""
    for region in regions:
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in region.patterns):
            return region.name
    return None


def protected_region_error(
    region: str, regions: Iterable[job_pb2.Region], also_protected: Iterable[str] = ()
) -> FieldError | None:
    """Why a deploy into `region` is refused as protected (by the job's regions or its policy), or None."""
    protected = {r.name for r in regions if r.protected} | set(also_protected)
    if region in protected:
        return FieldError("deploy.region", f"region '{region}' is protected and accepts no deploy")
    return None


def tied_parameter_error(module_name: str, modules: Iterable[job_pb2.ModuleInfo]) -> FieldError | None:
    """Why a deploy on `module_name` is refused because a parameter of it, or of a module inside it, is
    shared with a module outside it, or None. `modules`: the job's catalogue (or any part of it holding
    the module, those inside it, and every module with a tied parameter).

    A scaffold freezes (host_mode frozen), folds into and re-parents its host's parameters; on a shared
    tensor (a head tied to the input embedding) that would freeze or rewrite the other module too.
    """
    inside = module_name + "."
    tied = [
        f"{info.name}.{param.name} (also {', '.join(outside)})"
        for info in modules
        if info.name == module_name or info.name.startswith(inside)
        for param in info.parameters
        if (outside := [name for name in param.tied_to if not name.startswith(inside)])
    ]
    if not tied:
        return None
    return FieldError(
        "deploy.module",
        f"module '{module_name}' holds parameter(s) shared with other modules: {'; '.join(tied)}; "
        f"a scaffold here would also change them",
    )


def blueprint_spec_errors(blueprint: job_pb2.Blueprint, prefix: str = "blueprint") -> list[FieldError]:
    """Every declared parameter of `blueprint` that is unnamed, declared twice, or whose range is empty or
    misses its default (min <= default <= max, integral for an integer parameter)."""
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, param in enumerate(blueprint.params):
        field = f"{prefix}.params[{i}]"
        if not param.name or param.name in seen:
            errors.append(FieldError(f"{field}.name", f"must be a new parameter name, got {param.name!r}"))
        elif param.min > param.max:
            errors.append(FieldError(f"{field}.min", f"must be <= max {param.max:g}, got {param.min:g}"))
        elif not param.min <= param.default_value <= param.max:
            errors.append(
                FieldError(
                    f"{field}.default_value", f"must be in [{param.min:g}, {param.max:g}], got {param.default_value:g}"
                )
            )
        elif param.integer and param.default_value != int(param.default_value):
            errors.append(FieldError(f"{field}.default_value", f"must be an integer, got {param.default_value:g}"))
        seen.add(param.name)
    return errors


def raised_flags(gates: telemetry_pb2.GateTelemetry) -> tuple[str, ...]:
    """The safety flags set in `gates`, in `SAFETY_FLAGS` order."""
    return tuple(flag for flag in SAFETY_FLAGS if getattr(gates, flag))


def blueprint_param_values(blueprint: job_pb2.Blueprint, given: Mapping[str, float]) -> dict[str, float]:
    """Blueprint parameters with defaults filled in (assumes `blueprint_fit_errors` found none)."""
    values = {p.name: p.default_value for p in blueprint.params}
    values.update(given)
    return values


def blueprint_param_errors(
    blueprint: job_pb2.Blueprint, params: Mapping[str, float], prefix: str = "deploy.blueprint_params"
) -> list[FieldError]:
    """Every given parameter the blueprint does not declare, or outside its declared range."""
    errors: list[FieldError] = []
    known = {p.name: p for p in blueprint.params}
    for name, value in params.items():
        field = f"{prefix}.{name}"
        spec = known.get(name)
        if spec is None:
            known_names = ", ".join(known) or "none"
            errors.append(
                FieldError(field, f"blueprint '{blueprint.name}' has no parameter '{name}' (known: {known_names})")
            )
        elif not math.isfinite(value) or not spec.min <= value <= spec.max:
            errors.append(FieldError(field, f"must be in [{spec.min:g}, {spec.max:g}], got {value}"))
        elif spec.integer and value != int(value):
            errors.append(FieldError(field, f"must be an integer, got {value}"))
    return errors


def _host_errors(blueprint: job_pb2.Blueprint, module: job_pb2.ModuleInfo) -> list[FieldError]:
    errors: list[FieldError] = []
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
    if _on_conv(blueprint, module):
        errors.extend(_conv_geometry_errors(blueprint, module))
    elif not module.HasField("in_features") or not module.HasField("out_features"):
        errors.append(
            FieldError(
                "deploy.module",
                f"module '{module.name}' ({module.type}) has no known input/output feature sizes, "
                f"which blueprint '{blueprint.name}' needs",
            )
        )
    return errors


def _on_conv(blueprint: job_pb2.Blueprint, module: job_pb2.ModuleInfo) -> bool:
    """True when `blueprint` is built on `module` as a conv host (by its geometry, not its feature sizes)."""
    return module.type in CONV_HOST_TYPES and module.type in blueprint.host_types


def _conv_geometry_errors(blueprint: job_pb2.Blueprint, module: job_pb2.ModuleInfo) -> list[FieldError]:
    """Why the module's conv description cannot carry a conv seed: missing, or not a Conv2d's geometry."""
    if not module.HasField("conv"):
        return [
            FieldError(
                "deploy.module",
                f"module '{module.name}' ({module.type}) has no conv geometry (channels, kernel, stride, padding, "
                f"dilation, groups; a padding that differs between the sides of an axis has none), "
                f"which blueprint '{blueprint.name}' needs",
            )
        ]
    conv = module.conv
    lowest = {"kernel_size": 1, "stride": 1, "padding": 0, "dilation": 1}
    problems = [
        f"{name} must be 2 values >= {low}"
        for name, low in lowest.items()
        if len(getattr(conv, name)) != 2 or min(getattr(conv, name)) < low
    ]
    if min(conv.in_channels, conv.out_channels, conv.groups) < 1:
        problems.append("in_channels, out_channels and groups must be >= 1")
    elif conv.in_channels % conv.groups or conv.out_channels % conv.groups:
        problems.append(f"{conv.in_channels} in and {conv.out_channels} out channels must be multiples of groups")
    if conv.padding_mode not in PADDING_MODES:
        problems.append(f"padding_mode must be one of {', '.join(PADDING_MODES)}")
    if problems:
        reason = f"module '{module.name}' has an invalid conv geometry: {'; '.join(problems)}"
        return [FieldError("deploy.module", reason)]
    return []


def _conv_branch_errors(module: job_pb2.ModuleInfo, values: Mapping[str, float]) -> list[FieldError]:
    """Where conv_branch's branches could not fold exactly into the host, or have nothing to fold into."""
    if not values["branch_1x1"] and not values["identity"]:
        return [FieldError("deploy.blueprint_params.branch_1x1", "conv_branch needs a branch: branch_1x1 or identity")]
    conv, errors = module.conv, []
    kernel_h, kernel_w = conv.kernel_size
    if kernel_h % 2 == 0 or kernel_w % 2 == 0:
        errors.append(
            FieldError(
                "deploy.module",
                f"module '{module.name}' has a {kernel_h}x{kernel_w} kernel; conv_branch's branches sit at the "
                f"kernel's centre tap, which only an odd kernel has, so they could not fold exactly",
            )
        )
    if values["identity"] and conv.in_channels != conv.out_channels:
        errors.append(
            FieldError(
                "deploy.blueprint_params.identity",
                f"an identity branch needs as many output as input channels; module '{module.name}' maps "
                f"{conv.in_channels} to {conv.out_channels}",
            )
        )
    if values["bn"] and "bias" not in {p.name for p in module.parameters}:
        errors.append(
            FieldError(
                "deploy.blueprint_params.bn",
                f"module '{module.name}' has no bias to take the shift of the branches' BatchNorm; deploy with bn=0",
            )
        )
    return errors


def _blueprint_specific_errors(
    blueprint: job_pb2.Blueprint, module: job_pb2.ModuleInfo, values: Mapping[str, float]
) -> list[FieldError]:
    """The checks one built-in blueprint adds to the generic ones, on parameters that passed those.

    A LoRA's rank is bounded by its parameter's range alone: a rank above min(in, out) is the wide
    over-parameterisation of ExpandNets (Guo et al., 2020) and Arora et al. (2018), still folded exactly.
    """
    on_conv = _on_conv(blueprint, module)
    if blueprint.name == "lora" and on_conv and values["rank"] % module.conv.groups:
        return [
            FieldError(
                "deploy.blueprint_params.rank",
                f"rank {int(values['rank'])} is not a multiple of the {module.conv.groups} groups of module "
                f"'{module.name}' (A and B are grouped as the host)",
            )
        ]
    if blueprint.name == "conv_branch" and on_conv:
        return _conv_branch_errors(module, values)
    if blueprint.name == "dense_delta" and values.get("bias") and "bias" not in {p.name for p in module.parameters}:
        return [
            FieldError("deploy.blueprint_params.bias", f"module '{module.name}' has no bias to fold a bias delta into")
        ]
    return []


def blueprint_fit_errors(
    blueprint: job_pb2.Blueprint, module: job_pb2.ModuleInfo, params: Mapping[str, float]
) -> list[FieldError]:
    """Why `blueprint` cannot be built on `module` with `params`; empty when it fits."""
    errors = [*blueprint_param_errors(blueprint, params), *_host_errors(blueprint, module)]
    if errors:
        return errors
    return _blueprint_specific_errors(blueprint, module, blueprint_param_values(blueprint, params))
