"""Job policy (per-job limits and the tactical policy's settings): defaults (docs/design.md, section 6), validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from narset.contract import reasons
from narset.contract.rules import blueprint_param_errors
from narset.contract.scaffold_policy import effective_policy, policy_errors
from narset.control.errors import Refusal
from narset.v1 import job_pb2

if TYPE_CHECKING:
    from narset.store import Store

__all__ = ["MAX_WARM_START_SITES", "default_job_policy", "job_policy_of", "validate_job_policy"]

# The tactical policy derives warm-start command ids `auto.<job>.w<site>.b<N>`: two digits of site keep
# them within the 32 characters Narset may append to a job id (narset.contract.limits.BASE_ID_MAX).
MAX_WARM_START_SITES = 16


def default_job_policy() -> job_pb2.JobPolicy:
    return job_pb2.JobPolicy(
        max_live_scaffolds=3,
        max_scaffolds_per_region=1,
        max_folds_per_boundary=2,
        max_prunes_per_boundary=4,
        embargo_ckpts=3,
        auto=job_pb2.AutoPolicy(enabled=False, blueprint="lora", plateau_window=3, plateau_rel_delta=0.01),
    )


def job_policy_of(store: Store, job_id: str) -> job_pb2.JobPolicy:
    """The job's stored policy, or the defaults when it has none."""
    return store.get_policy(job_id) or default_job_policy()


def validate_job_policy(policy: job_pb2.JobPolicy, blueprints: Mapping[str, job_pb2.Blueprint]) -> None:
    """Raise INVALID_ARGUMENT naming the first bad field of `policy`; `blueprints`: the catalogue by name."""
    for name in (
        "max_live_scaffolds",
        "max_scaffolds_per_region",
        "max_folds_per_boundary",
        "max_prunes_per_boundary",
        "embargo_ckpts",
    ):
        value = getattr(policy, name)
        if value < 0:
            raise Refusal(reasons.INVALID_FIELD, f"policy.{name}", f"must be >= 0, got {value}")
    auto = policy.auto
    if auto.enabled:
        _check_blueprint("policy.auto.blueprint", auto.blueprint, blueprints)
    _check_deploy_settings("policy.auto", blueprints.get(auto.blueprint), auto)
    if auto.plateau_window < 0:
        raise Refusal(reasons.INVALID_FIELD, "policy.auto.plateau_window", f"must be >= 0, got {auto.plateau_window}")
    if not (math.isfinite(auto.plateau_rel_delta) and auto.plateau_rel_delta >= 0):
        raise Refusal(
            reasons.INVALID_FIELD,
            "policy.auto.plateau_rel_delta",
            f"must be a finite number >= 0, got {auto.plateau_rel_delta}",
        )
    _check_warm_start(auto.warm_start, blueprints)


def _check_blueprint(field: str, name: str, blueprints: Mapping[str, job_pb2.Blueprint]) -> None:
    if name not in blueprints:
        raise Refusal(
            reasons.INVALID_FIELD, field, f"unknown blueprint '{name}' (known: {', '.join(sorted(blueprints))})"
        )


def _check_deploy_settings(
    field: str, blueprint: job_pb2.Blueprint | None, settings: job_pb2.AutoPolicy | job_pb2.WarmStartSite
) -> None:
    """The parameters and scaffold policy a trigger deploys with, held to the rules of a deploy command
    now rather than refused at the boundary the trigger fires (an unknown blueprint is refused by name)."""
    if blueprint is None:
        return
    errors = blueprint_param_errors(blueprint, settings.blueprint_params, f"{field}.blueprint_params")
    errors += policy_errors(effective_policy(blueprint, settings.scaffold_policy), f"{field}.scaffold_policy")
    if errors:
        raise Refusal.of(reasons.INVALID_FIELD, errors)


def _check_warm_start(warm: job_pb2.WarmStart, blueprints: Mapping[str, job_pb2.Blueprint]) -> None:
    if len(warm.sites) > MAX_WARM_START_SITES:
        raise Refusal(
            reasons.INVALID_FIELD,
            "policy.auto.warm_start.sites",
            f"at most {MAX_WARM_START_SITES} sites, got {len(warm.sites)}",
        )
    if warm.exit_boundary < 0:
        raise Refusal(
            reasons.INVALID_FIELD, "policy.auto.warm_start.exit_boundary", f"must be >= 0, got {warm.exit_boundary}"
        )
    for index, site in enumerate(warm.sites):
        field = f"policy.auto.warm_start.sites[{index}]"
        if not site.region:
            raise Refusal(reasons.INVALID_FIELD, f"{field}.region", "is required")
        if site.blueprint:
            _check_blueprint(f"{field}.blueprint", site.blueprint, blueprints)
            _check_deploy_settings(field, blueprints[site.blueprint], site)
