"""Job policy (per-job limits and the tactical policy's settings): defaults (docs/design.md, section 6), validation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from narset.contract import reasons
from narset.control.errors import Refusal
from narset.v1 import job_pb2

if TYPE_CHECKING:
    from narset.store import Store

__all__ = ["default_job_policy", "job_policy_of", "validate_job_policy"]


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


def validate_job_policy(policy: job_pb2.JobPolicy, blueprint_names: set[str]) -> None:
    """Raise INVALID_ARGUMENT naming the first bad field of `policy`."""
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
    if auto.enabled and auto.blueprint not in blueprint_names:
        raise Refusal(
            reasons.INVALID_FIELD,
            "policy.auto.blueprint",
            f"unknown blueprint '{auto.blueprint}' (known: {', '.join(sorted(blueprint_names))})",
        )
    if auto.enabled and auto.plateau_window < 1:
        raise Refusal(reasons.INVALID_FIELD, "policy.auto.plateau_window", f"must be >= 1, got {auto.plateau_window}")
    if not (math.isfinite(auto.plateau_rel_delta) and auto.plateau_rel_delta >= 0):
        raise Refusal(
            reasons.INVALID_FIELD,
            "policy.auto.plateau_rel_delta",
            f"must be a finite number >= 0, got {auto.plateau_rel_delta}",
        )
