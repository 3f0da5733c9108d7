"""The `narset` command line: run the server, inspect jobs, issue commands.

Exit codes: 0 success, 2 usage error, 3 refused by the server (bad input or state),
4 server unreachable or timed out, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from narset.cli import render
from narset.cli.build import add_deploy_flags, add_target_flags, build_command
from narset.client import NarsetClient, NarsetError
from narset.contract.connection import Connection
from narset.control.credentials import digest, new_credential
from narset.v1 import command_pb2, job_pb2

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
REFUSAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
ACTIONS_ON_SCAFFOLD = {
    "fold": "fold a scaffold into its host (FUSE)",
    "prune": "remove a scaffold (PRUNE)",
    "persist": "extend a scaffold's TTL (PERSIST)",
    "rollback": "undo a scaffold's fold, restoring the host bit for bit",
    "pause": "freeze a scaffold's alpha schedule",
    "resume": "continue a paused alpha schedule",
}
STATE_NAMES = {
    name.removeprefix("COMMAND_STATE_").lower(): value
    for name, value in command_pb2.CommandState.items()
    if value != command_pb2.COMMAND_STATE_UNSPECIFIED
}


# queries --------------------------------------------------------------------------------------------


def cmd_jobs(client: NarsetClient, args: argparse.Namespace) -> None:
    jobs = client.list_jobs()
    if args.json:
        render.emit_json({"jobs": jobs})
    else:
        render.print_table(render.JOB_HEADERS, render.job_rows(jobs), empty="no jobs have attached")


def cmd_job(client: NarsetClient, args: argparse.Namespace) -> None:
    response = client.get_job(args.job)
    if args.json:
        render.emit_json(response)
        return
    render.print_table(render.JOB_HEADERS, render.job_rows([response.job]))
    print()
    render.print_table(
        ["REGION", "PATTERNS", "PROTECTED"],
        [[r.name, " ".join(r.patterns), "yes" if r.protected else ""] for r in response.job.regions],
        empty="no regions declared (each module is its own region)",
    )
    if response.embargoes:
        print()
        render.print_table(
            ["EMBARGOED REGION", "UNTIL BOUNDARY", "FAILURES"],
            [[e.region, e.until_boundary, e.failures] for e in response.embargoes],
        )


def cmd_modules(client: NarsetClient, args: argparse.Namespace) -> None:
    modules = client.list_modules(args.job)
    if args.json:
        render.emit_json({"modules": modules})
        return
    rows = [
        [
            m.name,
            m.type,
            m.in_features if m.HasField("in_features") else "",
            m.out_features if m.HasField("out_features") else "",
            " ".join(f"{p.name}{list(p.shape)}" for p in m.parameters),
            " ".join(m.traits),
        ]
        for m in modules
    ]
    render.print_table(["MODULE", "TYPE", "IN", "OUT", "PARAMETERS", "TRAITS"], rows)


def cmd_blueprints(client: NarsetClient, args: argparse.Namespace) -> None:
    blueprints = client.list_blueprints(args.job or "")
    if args.json:
        render.emit_json({"blueprints": blueprints})
        return
    rows = [
        [
            b.name,
            "/".join(b.host_types) + (f" +{','.join(b.required_traits)}" if b.required_traits else ""),
            render.enum_label(job_pb2.SizeClass, b.size_class, "SIZE_CLASS_").lower(),
            ",".join(render.enum_label(job_pb2.FoldKind, k, "FOLD_KIND_").lower() for k in b.folds),
            " ".join(f"{p.name}={p.default_value:g}" for p in b.params),
            b.description,
        ]
        for b in blueprints
    ]
    render.print_table(["BLUEPRINT", "HOSTS", "SIZE", "FOLDS", "PARAMS", "DESCRIPTION"], rows)


def cmd_scaffolds(client: NarsetClient, args: argparse.Namespace) -> None:
    scaffolds = client.list_scaffolds(args.job, include_ended=args.all)
    if args.json:
        render.emit_json({"scaffolds": scaffolds})
    else:
        render.print_table(render.SCAFFOLD_HEADERS, [render.scaffold_row(s) for s in scaffolds])


def cmd_scaffold(client: NarsetClient, args: argparse.Namespace) -> None:
    scaffold = client.get_scaffold(args.job, args.scaffold)
    if args.json:
        render.emit_json(scaffold)
        return
    render.print_table(render.SCAFFOLD_HEADERS, [render.scaffold_row(scaffold)])
    print()
    rows = [
        [h.boundary, render.stage_name(h.stage), f"{h.alpha:.4f}", render.gate_summary(h.gates)]
        for h in scaffold.history
    ]
    render.print_table(["BOUNDARY", "STAGE", "ALPHA", "GATES"], rows, empty="no boundary reported yet")


def cmd_commands(client: NarsetClient, args: argparse.Namespace) -> None:
    records = client.list_commands(args.job, [STATE_NAMES[s] for s in args.state])
    if args.json:
        render.emit_json({"commands": records})
    else:
        render.print_table(render.COMMAND_HEADERS, [render.command_row(r) for r in records])


def cmd_decisions(client: NarsetClient, args: argparse.Namespace) -> None:
    decisions = client.list_decisions(args.job)
    if args.json:
        render.emit_json({"decisions": decisions})
    else:
        render.print_table(render.DECISION_HEADERS, [render.decision_row(d) for d in decisions])


# policy ----------------------------------------------------------------------------------------------


def _warm_start_sites(value: str) -> list[job_pb2.WarmStartSite]:
    """`REGION[:BLUEPRINT],...`: a site without a blueprint takes auto.blueprint and its settings."""
    sites = []
    for item in filter(None, value.split(",")):
        region, _, blueprint = item.partition(":")
        sites.append(job_pb2.WarmStartSite(region=region, blueprint=blueprint))
    return sites


def _blueprint_params(value: str) -> dict[str, float]:
    """`NAME=NUMBER,...`, e.g. `rank=16,scaling=2`."""
    params = {}
    for item in filter(None, value.split(",")):
        name, sep, number = item.partition("=")
        if not sep:
            raise ValueError(item)
        params[name] = float(number)
    return params


# --set key -> (JobPolicy field path, parser)
POLICY_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "max_live_scaffolds": ("max_live_scaffolds", int),
    "max_scaffolds_per_region": ("max_scaffolds_per_region", int),
    "max_folds_per_boundary": ("max_folds_per_boundary", int),
    "max_prunes_per_boundary": ("max_prunes_per_boundary", int),
    "embargo_ckpts": ("embargo_ckpts", int),
    "protected_regions": ("protected_regions", lambda v: [r for r in v.split(",") if r]),
    "auto.blueprint": ("auto.blueprint", str),
    "auto.plateau_window": ("auto.plateau_window", int),
    "auto.plateau_rel_delta": ("auto.plateau_rel_delta", float),
    "auto.blueprint_params": ("auto.blueprint_params", _blueprint_params),
    "auto.warm_start": ("auto.warm_start.sites", _warm_start_sites),
    "auto.warm_start_exit": ("auto.warm_start.exit_boundary", int),
}


def _apply_policy_setting(policy: job_pb2.JobPolicy, setting: str) -> None:
    key, sep, raw = setting.partition("=")
    if not sep or key not in POLICY_KEYS:
        raise argparse.ArgumentTypeError(f"--set: expected KEY=VALUE with KEY one of {', '.join(POLICY_KEYS)}")
    path, parse = POLICY_KEYS[key]
    try:
        value = parse(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--set {key}: cannot parse {raw!r}") from None
    *parents, leaf = path.split(".")
    target = policy
    for name in parents:
        target = getattr(target, name)
    if isinstance(value, list):
        field = getattr(target, leaf)
        del field[:]
        field.extend(value)
    elif isinstance(value, dict):
        field = getattr(target, leaf)
        field.clear()
        field.update(value)
    else:
        setattr(target, leaf, value)


def cmd_policy(client: NarsetClient, args: argparse.Namespace) -> None:
    policy = client.get_policy(args.job)
    if args.set or args.auto:
        for setting in args.set:
            _apply_policy_setting(policy, setting)
        if args.auto:
            policy.auto.enabled = args.auto == "on"
        policy = client.set_policy(args.job, policy)
    if args.json:
        render.emit_json(policy)
        return
    rows = [[key, _policy_value(policy, path)] for key, (path, _) in POLICY_KEYS.items()]
    first_auto = next(i for i, key in enumerate(POLICY_KEYS) if key.startswith("auto."))
    rows.insert(first_auto, ["auto", "on" if policy.auto.enabled else "off"])
    render.print_table(["POLICY", "VALUE"], rows)


def _policy_value(policy: job_pb2.JobPolicy, path: str) -> str:
    """A policy field as `--set` takes it."""
    value = policy
    for name in path.split("."):
        value = getattr(value, name)
    if isinstance(value, (int, float, str)):
        return str(value)
    if hasattr(value, "items"):
        return ",".join(f"{k}={v:g}" for k, v in sorted(value.items()))
    return ",".join(
        item if isinstance(item, str) else ":".join(filter(None, (item.region, item.blueprint))) for item in value
    )


# commands --------------------------------------------------------------------------------------------


def cmd_submit(client: NarsetClient, args: argparse.Namespace) -> None:
    response = client.submit(build_command(args))
    if args.json:
        render.emit_json(response)
        return
    record = response.record
    note = " (already submitted: this is the original)" if response.duplicate else ""
    print(
        render.escaped(
            f"{record.command.WhichOneof('action')} {record.command.command_id} for scaffold {record.scaffold_id}: "
            f"{render.enum_label(command_pb2.CommandState, record.state, 'COMMAND_STATE_')}{note}"
        )
    )


def cmd_audit(client: NarsetClient, args: argparse.Namespace) -> None:
    entries = client.list_audit(args.job or "", after_sequence=args.after, limit=args.limit)
    if args.json:
        render.emit_json({"entries": entries})
    else:
        render.print_table(render.AUDIT_HEADERS, [render.audit_row(e) for e in entries], empty="no audit entries")


def cmd_detach(client: NarsetClient, args: argparse.Namespace) -> None:
    job = client.detach_job(args.job, args.reason)
    if args.json:
        render.emit_json(job)
    else:
        render.print_table(render.JOB_HEADERS, render.job_rows([job]))


def cmd_watch(client: NarsetClient, args: argparse.Namespace) -> None:
    for event in client.watch(args.job, after_sequence=args.after, follow=not args.no_follow):
        if args.json:
            render.emit_json(event)
        else:
            print(render.event_line(event))
        sys.stdout.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    from narset.server import serve
    from narset.server.app import InsecureBindError
    from narset.server.logs import configure_logging
    from narset.server.settings import load_settings
    from narset.store import DriverMissing

    settings = load_settings(
        args.config,
        address=args.address,
        db_path=args.db,
        grace_s=args.grace,
        log_level=args.log_level,
        log_format=args.log_format,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=True if args.insecure else None,
        metrics_address=args.metrics_address,
        metrics_job_labels=True if args.metrics_job_labels else None,
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings, ready_file=args.ready_file))
    except (InsecureBindError, DriverMissing) as refused:
        print(f"narset serve: {refused}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    """A new random token, and the settings entry that makes Narset accept it (which holds its hash only)."""
    token = new_credential()
    setting = {"name": args.name, "role": args.role, "sha256": digest(token), "jobs": args.jobs or ["*"]}
    if args.json:
        render.emit_json({"token": token, "setting": setting})
        return EXIT_OK
    print(f"token (give it to its holder through a file or NARSET_TOKEN; Narset keeps only its hash):\n  {token}")
    print("\nnarset.toml:\n[[tokens]]")
    for key, value in setting.items():
        print(f"{key} = {json.dumps(value)}")
    return EXIT_OK


def cmd_health(client: NarsetClient, args: argparse.Namespace) -> int:
    """Exit 0 only when the service serves: the container and Kubernetes probes run this."""
    status = client.health(args.service)
    if args.json:
        render.emit_json({"service": args.service, "status": status})
    else:
        print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    from narset_demo.demo import DemoConfig, run_demo

    config = DemoConfig(
        steps_per_boundary=args.steps_per_boundary, max_boundaries=args.max_boundaries, seeds=args.seeds
    )
    run_demo(config, args.json)
    return EXIT_OK


# parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="Narset address host:port (default: $NARSET_SERVER or 127.0.0.1:50051)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    common.add_argument("--token-file", type=Path, help="file holding the bearer token (default: $NARSET_TOKEN)")
    common.add_argument("--tls-ca", type=Path, help="CA bundle that signed Narset's certificate: use TLS")
    common.add_argument("--tls-cert", type=Path, help="client certificate, for mutual TLS (with --tls-key)")
    common.add_argument("--tls-key", type=Path, help="client private key, for mutual TLS")

    parser = argparse.ArgumentParser(prog="narset", description="Narset control plane for Kasmina scaffolds.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the Narset server")
    serve.add_argument("--address", help="host:port to listen on (port 0: any free port)")
    serve.add_argument(
        "--db", help="SQLite database file (default narset.db), or a postgresql:// URL shared by replicas"
    )
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--grace", type=float, help="shutdown grace period in seconds")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["json", "console"])
    serve.add_argument("--ready-file", type=Path, help="write the bound host:port here once listening")
    serve.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM), with --tls-key: TLS")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="CA bundle of client certificates: mutual TLS")
    serve.add_argument(
        "--insecure", action="store_true", help="listen beyond loopback without TLS and tokens (say so explicitly)"
    )
    serve.add_argument("--metrics-address", help="host:port of a Prometheus /metrics endpoint (default: none)")
    serve.add_argument("--metrics-job-labels", action="store_true", help="label the store's metrics by job id")

    token = sub.add_parser("token", help="make a bearer token and the settings entry that accepts it")
    token.add_argument("--name", required=True, help="the identity: issued_by of its commands, who in the audit log")
    token.add_argument("--role", required=True, choices=["admin", "operator", "viewer", "worker"])
    token.add_argument("--jobs", nargs="+", metavar="PATTERN", help="globs of the job ids it may act on (default *)")
    token.add_argument("--json", action="store_true", help="print JSON")

    demo = sub.add_parser("demo", help="run the whole loop on scikit-learn's digits with an embedded Narset")
    demo.add_argument("--json", action="store_true", help="print one JSON document instead of progress and tables")
    demo.add_argument("--steps-per-boundary", type=int, default=20, help="training steps between boundaries")
    demo.add_argument("--max-boundaries", type=int, default=30, help="training intervals (boundaries after the first)")
    demo.add_argument("--seeds", type=int, default=5, help="runs per condition; the first is shown in full")

    def query(name: str, handler, help_text: str, job: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text)
        if job:
            p.add_argument("job", help="job id")
        p.set_defaults(handler=handler)
        return p

    query(
        "health", cmd_health, "whether the server serves (grpc.health.v1); exit 0 only if SERVING", job=False
    ).add_argument(
        "--service", default="", help="one service, e.g. narset.v1.OperatorService (default: the whole server)"
    )
    query("jobs", cmd_jobs, "list jobs", job=False)
    query("job", cmd_job, "describe a job: ranks, regions, embargoes")
    query("modules", cmd_modules, "list a job's host modules")
    query("blueprints", cmd_blueprints, "list the built-in blueprints, and a job's own", job=False).add_argument(
        "job", nargs="?", help="also this job's own blueprints"
    )
    query("scaffolds", cmd_scaffolds, "list a job's scaffolds").add_argument(
        "--all", action="store_true", help="include fused and pruned scaffolds"
    )
    query("scaffold", cmd_scaffold, "one scaffold with its gates per boundary").add_argument("scaffold")
    query("commands", cmd_commands, "list a job's commands and their states").add_argument(
        "--state", action="append", default=[], choices=sorted(STATE_NAMES), help="filter (repeatable)"
    )
    query("decisions", cmd_decisions, "list a job's exit and policy decisions")
    policy = query("policy", cmd_policy, "show or change a job's policy")
    policy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a policy field")
    policy.add_argument("--auto", choices=["on", "off"], help="turn the tactical auto-policy on or off")
    audit = query("audit", cmd_audit, "the audit log: who did what, when, from where, how it ended", job=False)
    audit.add_argument("job", nargs="?", help="only this job's entries")
    audit.add_argument("--after", type=int, default=0, help="entries after this sequence number")
    audit.add_argument("--limit", type=int, default=0, help="at most this many (default and most: 1000)")
    detach = query("detach", cmd_detach, "free a job whose worker died: its credential stops working (audited)")
    detach.add_argument("--reason", default="", help="why, for the job's events and the audit log")
    watch = query("watch", cmd_watch, "stream a job's events")
    watch.add_argument("--after", type=int, default=0, help="replay stored events after this sequence number")
    watch.add_argument("--no-follow", action="store_true", help="print stored events and exit")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = query(name, cmd_submit, help_text)
        p.set_defaults(action=name)
        p.add_argument("--id", default="", help="command id, the idempotency key (default: assigned)")
        p.add_argument("--reason", default="", help="why, for the audit trail")
        p.add_argument(
            "--issued-by", default="", help="a label for the audit log; the command's issuer is your identity"
        )
        return p

    add_deploy_flags(action("deploy", "deploy a scaffold on a host module"))
    for name, help_text in ACTIONS_ON_SCAFFOLD.items():
        p = action(name, help_text)
        add_target_flags(p)
        if name in ("fold", "prune"):
            p.add_argument("--force", action="store_true", help="override a failing gate (audited)")
        if name == "prune":
            p.add_argument("--immediate", action="store_true", help="cut at once, no sunset ramp")
        if name == "persist":
            p.add_argument("--extra", type=int, help="boundaries to add (default 3)")
    return parser


def _error_document(error: NarsetError) -> dict[str, str]:
    """What `--json` prints on stdout for a failed call; `reason` and `field` are set for a refusal."""
    return {"code": error.code.name, "reason": error.reason, "field": error.field, "message": error.details}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "token":
        return cmd_token(args)
    try:
        connection = Connection.resolve(
            token_file=args.token_file, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key
        )
        with NarsetClient(args.server, timeout_s=args.timeout, connection=connection) as client:
            code = args.handler(client, args)
    except argparse.ArgumentTypeError as error:
        parser.exit(EXIT_USAGE, f"narset {args.command}: error: {error}\n")
    except NarsetError as error:
        if args.json:
            render.emit_json({"error": _error_document(error)})
        details = render.escaped(error.details)  # a refusal echoes the values it refused
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not error.reason:
            # gRPC's own, not Narset's: a message over the size limit never reached Narset or the client.
            print(f"narset: a message over the size limit ({details}); ask for less", file=sys.stderr)
            return EXIT_ERROR
        if error.code in REFUSAL_CODES:
            print(f"narset: refused ({error.code.name}): {details}", file=sys.stderr)
            return EXIT_REFUSED
        if error.code in UNREACHABLE_CODES:
            print(f"narset: cannot reach Narset at {client.address} ({error.code.name}): {details}", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"narset: server error ({error.code.name}): {details}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code or EXIT_OK
