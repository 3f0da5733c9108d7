"""The command ledger: validation at submit time, idempotent on command id.

A command is checked against the job as Narset knows it (module catalogue, regions, policy,
budgets, embargoes, live scaffolds) and refused with a precise status before anything is written.
"""

from __future__ import annotations

import math
import re
import time
import uuid

from narset.contract import reasons
from narset.contract.limits import ID_MAX, identifier_error, shown
from narset.contract.rules import (
    DEFAULT_EXTRA_CKPTS,
    FOLD_DEPTH,
    blueprint_fit_errors,
    persist_error,
    protected_region_error,
    region_for_module,
    tied_parameter_error,
)
from narset.contract.scaffold_policy import effective_policy, policy_errors
from narset.contract.stages import LIVE_STAGES, stage_name
from narset.control.blueprints import BlueprintCatalogue
from narset.control.decision_log import record_decision
from narset.control.errors import Refusal
from narset.control.events import EventHub
from narset.control.job_policy import job_policy_of
from narset.control.judge import judge_scaffold
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2

__all__ = ["ACTIONS", "GATES_ISSUER", "IN_FLIGHT", "CommandLedger", "new_command_id"]

ACTIONS = ("deploy", "fold", "prune", "persist", "rollback", "pause", "resume")
# Commands sent or about to be sent, without a result yet.
IN_FLIGHT = (command_pb2.COMMAND_STATE_PENDING, command_pb2.COMMAND_STATE_DELIVERED)
# The forms of the ids Narset derives for its own commands (decisions.py, tactical.py): a client
# may not submit one, so no submitted command can hold the id a later decision of the job needs.
_DERIVED_ID = re.compile(r".+\.(fuse|prune|persist|breaker)\.b[0-9]+|auto\..+\.b[0-9]+")
GATES_ISSUER = "narset:gates"  # commands of the decision engine, which has judged the gates already
_HAND_EXITS = {
    "fold": telemetry_pb2.DECISION_OUTCOME_FUSE,
    "prune": telemetry_pb2.DECISION_OUTCOME_PRUNE,
    "persist": telemetry_pb2.DECISION_OUTCOME_PERSIST,
}


def new_command_id() -> str:
    return f"cmd-{uuid.uuid4().hex[:12]}"


def check_identifier(field: str, value: str, limit: int = ID_MAX) -> None:
    error = identifier_error(field, value, limit)
    if error is not None:
        raise Refusal(reasons.INVALID_FIELD, error.field, error.reason)


class CommandLedger:
    """Validates and records commands; the exchange reads and advances them."""

    def __init__(self, store: Store, events: EventHub) -> None:
        self._store = store
        self._events = events
        self._blueprints = BlueprintCatalogue(store)

    def accept(self, command: command_pb2.AdaptationCommand, issuer: str) -> tuple[command_pb2.CommandRecord, bool]:
        """`submit` for a command from a client: `issuer`, the caller's identity, is its issued_by (never the
        text the client sent), and its id may not take the form of a derived id."""
        if _DERIVED_ID.fullmatch(command.command_id):
            raise Refusal(
                reasons.INVALID_FIELD,
                "command.command_id",
                f"{shown(command.command_id)} has the form of the ids Narset derives for its own commands "
                f"(<scaffold>.<fuse|prune|persist|breaker>.b<N>, auto.<job>.b<N>); choose another",
            )
        command.issued_by = issuer
        return self.submit(command)

    def submit(self, command: command_pb2.AdaptationCommand) -> tuple[command_pb2.CommandRecord, bool]:
        """Validate and enqueue `command`; returns (record, duplicate). Command ids are scoped per job.

        One transaction holding the job's lock, from the duplicate check to the write: a command
        submitted twice at once (to two replicas) is recorded once, and it is checked against the job
        as it is when it is written.
        """
        if not command.job_id:
            raise Refusal(reasons.INVALID_FIELD, "command.job_id", "is required")
        with self._store.transaction(job=command.job_id):
            return self._submit(command)

    def _submit(self, command: command_pb2.AdaptationCommand) -> tuple[command_pb2.CommandRecord, bool]:
        if command.command_id:
            check_identifier("command.command_id", command.command_id)
            existing = self._store.get_command(command.job_id, command.command_id)
            if existing is not None:
                return existing, True
        job = self._store.get_job(command.job_id)
        if job is None:
            raise Refusal(
                reasons.JOB_NOT_FOUND, "command.job_id", f"no job {shown(command.job_id)} has attached to this Narset"
            )
        action = command.WhichOneof("action")
        if action is None:
            raise Refusal(reasons.INVALID_FIELD, "command.action", f"one of {', '.join(ACTIONS)} is required")

        record = command_pb2.CommandRecord(state=command_pb2.COMMAND_STATE_PENDING)
        record.command.CopyFrom(command)
        cmd = record.command
        cmd.command_id = cmd.command_id or new_command_id()
        cmd.issued_by = cmd.issued_by or "operator"
        if not cmd.HasField("created_at"):
            cmd.created_at.FromNanoseconds(time.time_ns())
        new_scaffold = None
        decision = None
        if action == "deploy":
            new_scaffold = self._check_deploy(job, cmd)
            record.scaffold_id = new_scaffold.scaffold_id
        else:
            target = self._check_scaffold_action(job, cmd, action)
            record.scaffold_id = target.scaffold_id
            getattr(cmd, action).scaffold.scaffold_id = target.scaffold_id
            record.forced = bool(getattr(getattr(cmd, action), "force", False))
            if action in _HAND_EXITS and cmd.issued_by != GATES_ISSUER:
                decision = self._hand_exit(job, cmd, action, target, record.forced)
        record.updated_at.FromNanoseconds(time.time_ns())

        self._store.put_command(record)
        if new_scaffold is not None:
            self._store.put_scaffold(new_scaffold)
        if decision is not None:
            record_decision(self._store, self._events, decision)
        self._events.emit(
            job.job_id,
            job_pb2.EVENT_KIND_COMMAND_SUBMITTED,
            f"{action} {record.scaffold_id} submitted by {cmd.issued_by}",
            command_id=cmd.command_id,
            action=action,
            scaffold_id=record.scaffold_id,
        )
        return record, False

    # deploy -------------------------------------------------------------------------------------

    def _check_deploy(self, job: job_pb2.Job, cmd: command_pb2.AdaptationCommand) -> job_pb2.Scaffold:
        deploy = cmd.deploy
        if not deploy.module:
            raise Refusal(reasons.INVALID_FIELD, "deploy.module", "is required")
        module = self._store.get_module(job.job_id, deploy.module)
        if module is None:
            raise Refusal(
                reasons.MODULE_NOT_FOUND, "deploy.module", f"job '{job.job_id}' has no module '{deploy.module}'"
            )
        if not deploy.blueprint:
            raise Refusal(reasons.INVALID_FIELD, "deploy.blueprint", "is required")
        blueprint = self._blueprints.get(job.job_id, deploy.blueprint)
        if blueprint is None:
            known = ", ".join(b.name for b in self._blueprints.list(job.job_id))
            raise Refusal(
                reasons.BLUEPRINT_NOT_FOUND, "deploy.blueprint", f"no blueprint '{deploy.blueprint}' (known: {known})"
            )
        tied = tied_parameter_error(module.name, self._store.list_modules(job.job_id))
        if tied is not None:
            raise Refusal(reasons.PARAMETER_TIED, tied.field, tied.reason)
        fit = blueprint_fit_errors(blueprint, module, dict(deploy.blueprint_params))
        if fit:
            raise Refusal.of(reasons.BLUEPRINT_DOES_NOT_FIT, fit)
        if deploy.HasField("learning_rate") and not (math.isfinite(deploy.learning_rate) and deploy.learning_rate > 0):
            raise Refusal(
                reasons.INVALID_FIELD,
                "deploy.learning_rate",
                f"must be a finite number > 0, got {deploy.learning_rate}",
            )
        policy = effective_policy(blueprint, deploy.policy)
        errors = policy_errors(policy, prefix="deploy.policy")
        if errors:
            raise Refusal.of(reasons.INVALID_FIELD, errors)

        job_policy = job_policy_of(self._store, job.job_id)
        region = self._check_region(job, deploy, job_policy)
        self._check_embargo(job, region)
        occupant = self._store.occupying_scaffold(job.job_id, deploy.module)
        if occupant is not None:
            raise Refusal(
                reasons.MODULE_OCCUPIED,
                "deploy.module",
                f"module '{deploy.module}' already carries scaffold '{occupant.scaffold_id}' "
                f"({stage_name(occupant.stage)}); fold or prune it first",
            )
        live = self._store.live_scaffolds(job.job_id)
        if len(live) >= job_policy.max_live_scaffolds:
            raise Refusal(
                reasons.BUDGET_EXCEEDED,
                "deploy",
                f"job '{job.job_id}' has {len(live)} live scaffold(s); its policy allows "
                f"max_live_scaffolds={job_policy.max_live_scaffolds}",
            )
        in_region = [s for s in live if s.region == region]
        if len(in_region) >= job_policy.max_scaffolds_per_region:
            raise Refusal(
                reasons.BUDGET_EXCEEDED,
                "deploy.region",
                f"region '{region}' has {len(in_region)} live scaffold(s) "
                f"({', '.join(s.scaffold_id for s in in_region)}); its policy allows "
                f"max_scaffolds_per_region={job_policy.max_scaffolds_per_region}",
            )
        scaffold_id = deploy.scaffold_id or cmd.command_id
        check_identifier("deploy.scaffold_id", scaffold_id)
        if self._store.get_scaffold(job.job_id, scaffold_id) is not None:
            raise Refusal(
                reasons.SCAFFOLD_EXISTS, "deploy.scaffold_id", f"scaffold '{scaffold_id}' already exists in job"
            )
        deploy.scaffold_id = scaffold_id
        deploy.region = region
        return job_pb2.Scaffold(
            scaffold_id=scaffold_id,
            job_id=job.job_id,
            module=deploy.module,
            blueprint=deploy.blueprint,
            region=region,
            stage=telemetry_pb2.SCAFFOLD_STAGE_PENDING,
            policy=policy,
            deploy_command_id=cmd.command_id,
            ttl_ckpts=policy.ttl_ckpts,
        )

    def _check_region(self, job: job_pb2.Job, deploy: command_pb2.DeployAction, job_policy: job_pb2.JobPolicy) -> str:
        """The deploy's region (a module outside every region is its own region), if deployable."""
        regions = {r.name: r for r in job.regions}
        if deploy.region:
            region = regions.get(deploy.region)
            if region is None:
                raise Refusal(
                    reasons.REGION_NOT_FOUND,
                    "deploy.region",
                    f"job '{job.job_id}' has no region '{deploy.region}' (known: {', '.join(regions)})",
                )
            if region_for_module([region], deploy.module) is None:
                raise Refusal(
                    reasons.INVALID_FIELD,
                    "deploy.region",
                    f"module '{deploy.module}' does not match region '{region.name}' patterns {list(region.patterns)}",
                )
            name = region.name
        else:
            name = region_for_module(job.regions, deploy.module) or deploy.module
        protected = protected_region_error(name, job.regions, job_policy.protected_regions)
        if protected is not None:
            raise Refusal.of(reasons.REGION_PROTECTED, [protected])
        return name

    def _check_embargo(self, job: job_pb2.Job, region: str) -> None:
        for embargo in self._store.list_embargoes(job.job_id):
            if embargo.region == region and job.last_boundary < embargo.until_boundary:
                raise Refusal(
                    reasons.REGION_EMBARGOED,
                    "deploy.region",
                    f"region '{region}' is under embargo until boundary {embargo.until_boundary} "
                    f"after {embargo.failures} failed scaffold(s); the job is at boundary {job.last_boundary}",
                )

    # actions on an existing scaffold ------------------------------------------------------------

    def _check_scaffold_action(
        self, job: job_pb2.Job, cmd: command_pb2.AdaptationCommand, action: str
    ) -> job_pb2.Scaffold:
        body = getattr(cmd, action)
        scaffold = self._resolve(job, action, body.scaffold)
        if action == "rollback":
            self._check_rollback(job, scaffold)
            return scaffold
        if scaffold.stage not in LIVE_STAGES:
            raise Refusal(
                reasons.SCAFFOLD_ENDED,
                f"{action}.scaffold",
                f"scaffold '{scaffold.scaffold_id}' has ended ({stage_name(scaffold.stage)})",
            )
        if scaffold.stage == telemetry_pb2.SCAFFOLD_STAGE_PENDING:
            raise Refusal(
                reasons.SCAFFOLD_PENDING,
                f"{action}.scaffold",
                f"scaffold '{scaffold.scaffold_id}' is still PENDING: its deploy has not been applied yet",
            )
        if action in ("fold", "prune"):
            for other in self._store.list_commands(job.job_id, IN_FLIGHT):
                if other.scaffold_id == scaffold.scaffold_id and other.command.WhichOneof("action") in (
                    "fold",
                    "prune",
                ):
                    raise Refusal(
                        reasons.EXIT_IN_FLIGHT,
                        f"{action}.scaffold",
                        f"scaffold '{scaffold.scaffold_id}' already has an exit in flight: "
                        f"{other.command.WhichOneof('action')} '{other.command.command_id}'",
                    )
        if action == "persist":
            self._check_persist(scaffold, cmd.persist)
        return scaffold

    def _hand_exit(
        self, job: job_pb2.Job, cmd: command_pb2.AdaptationCommand, action: str, scaffold: job_pb2.Scaffold, force: bool
    ) -> telemetry_pb2.Decision:
        """The audit record of an operator exit; a fold that a gate would refuse needs `force`."""
        probe_loss = job.last_probe_loss if job.HasField("last_probe_loss") else None
        judgement = judge_scaffold(self._store, scaffold, probe_loss)
        failing = [*judgement.flags, *judgement.hard_failures, *judgement.soft_failures]
        if action == "fold" and failing and not force:
            raise Refusal(
                reasons.GATE_FAILING,
                "fold.force",
                f"gate(s) {', '.join(failing)} fail or are unmeasured for scaffold '{scaffold.scaffold_id}'; "
                f"fold with force to override (the override is recorded)",
            )
        reason = cmd.reason or f"{action} by {cmd.issued_by}"
        if force and failing:
            reason += f" (forced past {', '.join(failing)})"
        decision = telemetry_pb2.Decision(
            decision_id=cmd.command_id,
            job_id=job.job_id,
            scaffold_id=scaffold.scaffold_id,
            boundary=job.last_boundary,
            outcome=_HAND_EXITS[action],
            reason=reason,
            inputs=scaffold.gates,
            thresholds=scaffold.policy.gates,
            verdicts=judgement.verdicts,
            command_id=cmd.command_id,
            issued_by=cmd.issued_by,
            forced=force,
        )
        return decision

    def _resolve(self, job: job_pb2.Job, action: str, ref: command_pb2.ScaffoldRef) -> job_pb2.Scaffold:
        which = ref.WhichOneof("ref")
        if which is None:
            raise Refusal(reasons.INVALID_FIELD, f"{action}.scaffold", "scaffold_id or module is required")
        if which == "scaffold_id":
            scaffold = self._store.get_scaffold(job.job_id, ref.scaffold_id)
            if scaffold is None:
                raise Refusal(
                    reasons.SCAFFOLD_NOT_FOUND,
                    f"{action}.scaffold.scaffold_id",
                    f"job '{job.job_id}' has no scaffold '{ref.scaffold_id}'",
                )
            return scaffold
        if self._store.get_module(job.job_id, ref.module) is None:
            raise Refusal(
                reasons.MODULE_NOT_FOUND,
                f"{action}.scaffold.module",
                f"job '{job.job_id}' has no module '{ref.module}'",
            )
        if action == "rollback":
            fused = [
                s
                for s in self._store.list_scaffolds(job.job_id, (telemetry_pb2.SCAFFOLD_STAGE_FUSED,))
                if s.module == ref.module
            ]
            if not fused:
                raise Refusal(
                    reasons.SCAFFOLD_NOT_FOUND,
                    "rollback.scaffold.module",
                    f"no fused scaffold on module '{ref.module}'",
                )
            return fused[-1]
        scaffold = self._store.occupying_scaffold(job.job_id, ref.module)
        if scaffold is None:
            raise Refusal(
                reasons.SCAFFOLD_NOT_FOUND, f"{action}.scaffold.module", f"no live scaffold on module '{ref.module}'"
            )
        return scaffold

    def _check_persist(self, scaffold: job_pb2.Scaffold, persist: command_pb2.PersistAction) -> None:
        extra = persist.extra_ckpts if persist.HasField("extra_ckpts") else DEFAULT_EXTRA_CKPTS
        error = persist_error(scaffold.extensions, scaffold.ttl_ckpts, scaffold.policy.ttl_ckpts, extra)
        if error is not None:
            raise Refusal(error.code, error.field, f"scaffold '{scaffold.scaffold_id}': {error.reason}")
        persist.extra_ckpts = extra

    def _check_rollback(self, job: job_pb2.Job, scaffold: job_pb2.Scaffold) -> None:
        if scaffold.stage != telemetry_pb2.SCAFFOLD_STAGE_FUSED:
            raise Refusal(
                reasons.ROLLBACK_UNAVAILABLE,
                "rollback.scaffold",
                f"scaffold '{scaffold.scaffold_id}' is {stage_name(scaffold.stage)}; only a fused scaffold "
                f"can be rolled back",
            )
        folds = [
            r.scaffold_id
            for r in self._store.list_commands(job.job_id, (command_pb2.COMMAND_STATE_APPLIED,))
            if r.command.WhichOneof("action") == "fold"
        ]
        recent = folds[-FOLD_DEPTH:]
        if scaffold.scaffold_id not in recent:
            raise Refusal(
                reasons.ROLLBACK_UNAVAILABLE,
                "rollback.scaffold",
                f"scaffold '{scaffold.scaffold_id}' is not among the last {FOLD_DEPTH} folds of job "
                f"'{job.job_id}', whose pre-fold tensors are kept",
            )
