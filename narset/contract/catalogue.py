"""The built-in blueprint catalogue (docs/design.md, section 4).

Pure data over the contract messages: Narset serves and validates against it (with the fit rules
of `narset.contract.rules`), Kasmina builds seeds for exactly these names and parameters.
"""

from __future__ import annotations

from narset.contract.rules import ANY_HOST_TYPE
from narset.v1 import command_pb2, job_pb2

__all__ = ["BUILTIN_BLUEPRINTS"]


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
        description=(
            "Low-rank delta B·A·x·scaling on a linear layer or a Conv2d (A the host's k×k conv to r channels, "
            "B a 1×1 conv); folds exactly at any alpha."
        ),
        host_types=["Linear", "Conv1D", "Conv2d"],
        size_class=job_pb2.SIZE_CLASS_MICRO,
        folds=[job_pb2.FOLD_KIND_LORA],
        default_policy=_DELTA_POLICY,
        params=[
            _param(
                "rank",
                8,
                1,
                4096,
                True,
                "rank r of A [r, in] and B [out, r]; above min(in, out) it over-parameterises; "
                "on a Conv2d a multiple of its groups",
            ),
            _param("scaling", 1.0, 1e-6, 1e6, False, "multiplier of B·A"),
        ],
    ),
    job_pb2.Blueprint(
        name="expand",
        description=(
            "ExpandNets over-parameterisation: U·V·x with inner width >= max(in, out) on a linear layer, "
            "1×1·k×k·1×1 convs on a Conv2d; contracted exactly into the host at any alpha."
        ),
        host_types=["Linear", "Conv1D", "Conv2d"],
        size_class=job_pb2.SIZE_CLASS_MESO,
        folds=[job_pb2.FOLD_KIND_REPARAM],
        default_policy=_DELTA_POLICY,
        params=[
            _param(
                "width_factor",
                2,
                1,
                16,
                True,
                "r: inner width r·max(in, out) on a linear layer; r·in and r·out channels on a Conv2d",
            )
        ],
    ),
    job_pb2.Blueprint(
        name="conv_branch",
        description=(
            "RepVGG/ACNet branches beside a k×k Conv2d (odd k): a 1×1 conv and/or the identity at the kernel's "
            "centre, each with its own BatchNorm; folds exactly into the eval-mode function at any alpha."
        ),
        host_types=["Conv2d"],
        size_class=job_pb2.SIZE_CLASS_MICRO,
        folds=[job_pb2.FOLD_KIND_REPARAM],
        default_policy=_DELTA_POLICY,
        params=[
            _param("branch_1x1", 1, 0, 1, True, "1: a 1×1 conv branch"),
            _param("identity", 0, 0, 1, True, "1: an identity branch (in_channels == out_channels)"),
            _param("bn", 1, 0, 1, True, "1: a BatchNorm on each branch (its shift needs the host's bias)"),
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
        description=(
            "Non-linear MLP seed in parallel with the host; weaned by the task loss (alpha decays to 0 while the "
            "host trains jointly), leaves at alpha 0."
        ),
        host_types=[ANY_HOST_TYPE],
        size_class=job_pb2.SIZE_CLASS_MESO,
        folds=[job_pb2.FOLD_KIND_TRANSFER],
        default_policy=command_pb2.ScaffoldPolicy(
            ttl_ckpts=12,
            schedule=_schedule(2, 3, 7),
            exit_policy=command_pb2.EXIT_POLICY_PREFER_FUSE,
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
