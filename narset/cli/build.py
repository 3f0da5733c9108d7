"""Builds AdaptationCommands from CLI flags; flag names mirror the contract's field names."""

from __future__ import annotations

import argparse

from narset.v1 import command_pb2

__all__ = ["add_deploy_flags", "add_target_flags", "build_command", "parse_params"]

CURVES = {"linear": command_pb2.ALPHA_CURVE_LINEAR, "cosine": command_pb2.ALPHA_CURVE_COSINE}
EXIT_POLICIES = {
    "fuse": command_pb2.EXIT_POLICY_PREFER_FUSE,
    "prune": command_pb2.EXIT_POLICY_PREFER_PRUNE,
    "persist-if-wins": command_pb2.EXIT_POLICY_PERSIST_IF_WINS,
}
# flag -> (message path inside ScaffoldPolicy, type)
POLICY_FLAGS: dict[str, tuple[str, type]] = {
    "ttl": ("ttl_ckpts", int),
    "isolated": ("schedule.isolated_ckpts", int),
    "warmup": ("schedule.warmup_ckpts", int),
    "hold": ("schedule.hold_ckpts", int),
    "decay": ("schedule.decay_ckpts", int),
    "warm_level": ("schedule.warm_level", float),
    "floor": ("schedule.floor", float),
    "site_distill": ("teaching.site_distill_weight", float),
    "kd_weight": ("teaching.kd.weight", float),
    "kd_tau": ("teaching.kd.tau", float),
    "kd_tap": ("teaching.kd.logits_tap", str),
    "feature_weight": ("teaching.feature.weight", float),
    "feature_cadence": ("teaching.feature.cadence_steps", int),
    "probe_weight": ("teaching.probe_weight", float),
    "foldable": ("fold.foldable", lambda v: v == "yes"),
    "svd_rank": ("fold.svd_rank", int),
    "sunset": ("fold.sunset_ckpts", int),
    "epsilon": ("gates.transfer_epsilon", float),
    "gamma": ("gates.residual_gain_gamma", float),
    "theta": ("gates.foldability_theta", float),
    "jitter_max": ("gates.jitter_p95_max", float),
    "drift_max": ("gates.drift_max", float),
    "diversity_min": ("gates.diversity_min", float),
    "step_time_max": ("gates.step_time_ratio_max", float),
    "memory_max": ("gates.memory_fraction_max", float),
}


def parse_params(pairs: list[str]) -> dict[str, float]:
    """`["rank=4", "scaling=2"]` -> `{"rank": 4.0, "scaling": 2.0}`; usage error on a bad pair."""
    params: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--param: expected NAME=NUMBER, got {pair!r}")
        try:
            params[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--param {name}: expected a number, got {value!r}") from None
    return params


def add_deploy_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--module", required=True, help="qualified host module name")
    parser.add_argument("--blueprint", required=True, help="blueprint name (see `narset blueprints`)")
    parser.add_argument("--region", default="", help="region (default: the first whose patterns match)")
    parser.add_argument("--scaffold-id", default="", help="scaffold id (default: the command id)")
    parser.add_argument("--permanent", action="store_true", help="ordinary growth: alpha -> 1, no TTL, no exit")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="blueprint parameter")
    parser.add_argument("--lr", type=float, help="learning rate of the seed parameter group")
    parser.add_argument("--curve", choices=sorted(CURVES), help="alpha curve")
    parser.add_argument("--exit-policy", choices=sorted(EXIT_POLICIES), help="what passing gates lead to")
    parser.add_argument("--feature-taps", default="", help="comma-separated modules for feature MSE")
    group = parser.add_argument_group("scaffold policy (unset: the blueprint's defaults)")
    for flag, (path, kind) in POLICY_FLAGS.items():
        option = "--" + flag.replace("_", "-")
        if flag == "foldable":
            group.add_argument(option, choices=["yes", "no"], help=path)
        else:
            group.add_argument(option, type=kind, metavar=kind.__name__.upper(), help=path)


def add_target_flags(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--scaffold", help="scaffold id")
    target.add_argument("--module", help="the host module carrying the scaffold")


def _set_path(message, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    setattr(message, leaf, value)


def _deploy(args: argparse.Namespace, action: command_pb2.DeployAction) -> None:
    action.module = args.module
    action.blueprint = args.blueprint
    action.region = args.region
    action.scaffold_id = args.scaffold_id
    if args.permanent:
        action.as_scaffold = False
    for name, value in parse_params(args.param).items():
        action.blueprint_params[name] = value
    if args.lr is not None:
        action.learning_rate = args.lr
    policy = action.policy
    for flag, (path, _) in POLICY_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            _set_path(policy, path, value)
    if args.curve:
        policy.schedule.curve = CURVES[args.curve]
    if args.exit_policy:
        policy.exit_policy = EXIT_POLICIES[args.exit_policy]
    if args.feature_taps:
        policy.teaching.feature.taps.extend(t for t in args.feature_taps.split(",") if t)


def build_command(args: argparse.Namespace) -> command_pb2.AdaptationCommand:
    """The AdaptationCommand that `narset <action> JOB ...` asks for."""
    command = command_pb2.AdaptationCommand(
        command_id=args.id, job_id=args.job, issued_by=args.issued_by, reason=args.reason
    )
    action = getattr(command, args.action)
    if args.action == "deploy":
        _deploy(args, action)
        return command
    if args.scaffold:
        action.scaffold.scaffold_id = args.scaffold
    else:
        action.scaffold.module = args.module
    if args.action in ("fold", "prune"):
        action.force = args.force
    if args.action == "prune":
        action.immediate = args.immediate
    if args.action == "persist" and args.extra is not None:
        action.extra_ckpts = args.extra
    return command
