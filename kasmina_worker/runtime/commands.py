"""Validation and application of `AdaptationCommand`s at a boundary.

Every refusal is a `Rejected(code, field, reason)`: the stable reason code Narset gives the same
refusal (`narset.contract.reasons`) and the command field, raised before anything changes;
`CommandApplier.apply` turns it into a REJECTED `CommandResult` (its `reason` the code) and never
raises on a bad command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import structlog
import torch
from torch import nn

from kasmina_worker.measure.gate_formulas import relative_change
from kasmina_worker.measure.gate_meter import eval_mode
from kasmina_worker.runtime.lifecycle import (
    EXIT_FOLD,
    EXIT_PRUNE,
    EXIT_TRANSFER,
    DeployPlan,
    LiveScaffold,
    ScaffoldRuntime,
)
from kasmina_worker.seeds.blueprints import get_blueprint
from kasmina_worker.seeds.fold import FoldError
from kasmina_worker.seeds.hosts import has_delta_layout, module_info, parameter_ties
from kasmina_worker.seeds.scaffold import Scaffold
from narset.contract import reasons
from narset.contract.rules import (
    DEFAULT_EXTRA_CKPTS,
    blueprint_fit_errors,
    blueprint_param_values,
    protected_region_error,
    region_for_module,
    tied_parameter_error,
)
from narset.contract.scaffold_policy import effective_policy, policy_errors
from narset.v1 import command_pb2, job_pb2, telemetry_pb2

__all__ = ["CommandApplier", "Rejected"]

log = structlog.get_logger("kasmina")


class Rejected(Exception):
    """A command refused before it changed anything: the reason code, the field and the reason."""

    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.code = code
        self.field = field
        self.reason = reason


class CommandApplier:
    """Applies commands to a `ScaffoldRuntime`; `on_exit` is told of every scaffold that leaves."""

    def __init__(
        self,
        runtime: ScaffoldRuntime,
        job: str,
        regions: Sequence[job_pb2.Region],
        on_exit: Callable[[LiveScaffold, int], None],
        site_inputs: Callable[[str], list[torch.Tensor]],
        autocast: torch.dtype | None = None,
    ) -> None:
        self.runtime = runtime
        self.site_inputs = site_inputs
        self.autocast = autocast
        self.fold_parity: dict[str, float] = {}
        self.autocast_parity: dict[str, float] = {}
        self.job = job
        self.regions = list(regions)
        self.on_exit = on_exit
        self.applied: list[str] = []

    def apply(self, command: command_pb2.AdaptationCommand, boundary: int) -> telemetry_pb2.CommandResult:
        """Apply one command; APPLIED or REJECTED with a message naming the field."""
        result = telemetry_pb2.CommandResult(command_id=command.command_id, boundary=boundary)
        if command.command_id and command.command_id in self.applied:
            result.outcome = telemetry_pb2.COMMAND_OUTCOME_APPLIED
            result.message = "already applied (duplicate delivery)"
            return result
        try:
            scaffold_id, message = self._apply(command, boundary)
        except Rejected as refusal:
            result.outcome = telemetry_pb2.COMMAND_OUTCOME_REJECTED
            result.message = str(refusal)
            result.reason = refusal.code
            log.warning("command_rejected", job=self.job, command_id=command.command_id, reason=str(refusal))
            return result
        self.applied.append(command.command_id)
        result.outcome = telemetry_pb2.COMMAND_OUTCOME_APPLIED
        result.scaffold_id, result.message = scaffold_id, message
        return result

    def _apply(self, command: command_pb2.AdaptationCommand, boundary: int) -> tuple[str, str]:
        if not command.command_id:
            raise Rejected(reasons.INVALID_FIELD, "command_id", "must be set (submit assigns one in local mode)")
        if command.job_id and command.job_id != self.job:
            raise Rejected(
                reasons.INVALID_FIELD, "job_id", f"command is for job '{command.job_id}', this worker runs '{self.job}'"
            )
        action = command.WhichOneof("action")
        if action is None:
            raise Rejected(reasons.INVALID_FIELD, "action", "no action set")
        if action == "deploy":
            live = self.runtime.deploy(self._plan(command), boundary)
            return live.scaffold_id, f"deployed {live.plan.spec.proto.name} on '{live.plan.module_name}'"
        body = getattr(command, action)
        live = self._resolve(action, body.scaffold) if action != "rollback" else None
        if action == "fold":
            weaned = live.plan.spec.fold_kind != job_pb2.FOLD_KIND_TRANSFER or live.schedule.weaned()
            note = "" if weaned else "; not weaned (its DECAY has not run), so removed as by a prune: PRUNED"
            return live.scaffold_id, self._start_exit(live, EXIT_FOLD, command.command_id, boundary) + note
        if action == "prune":
            if body.immediate:
                with_alpha = float(live.module.alpha)
                self._exit_now(live, EXIT_PRUNE, boundary)
                return live.scaffold_id, f"pruned at once at alpha {with_alpha:.6g} (safety cut)"
            return live.scaffold_id, self._start_exit(live, EXIT_PRUNE, command.command_id, boundary)
        if action == "persist":
            extra = body.extra_ckpts if body.HasField("extra_ckpts") else DEFAULT_EXTRA_CKPTS
            error = live.schedule.persist_error(extra)
            if error is not None:
                raise Rejected(error.code, error.field, error.reason)
            live.schedule.persist(extra)
            self.runtime.apply_schedule(live)
            return live.scaffold_id, f"ttl extended by {extra} to {live.schedule.state.ttl}"
        if action in ("pause", "resume"):
            live.schedule.pause() if action == "pause" else live.schedule.resume()
            log.info(f"scaffold_{action}d", job=self.job, scaffold_id=live.scaffold_id)
            return live.scaffold_id, f"schedule {action}d"
        return self._rollback(body.scaffold, boundary)

    # ---- deploy ----------------------------------------------------------------------------

    def _plan(self, command: command_pb2.AdaptationCommand) -> DeployPlan:
        deploy = command.deploy
        name = deploy.module
        host = self._host_module(name)
        spec = get_blueprint(deploy.blueprint)
        if spec is None:
            raise Rejected(reasons.BLUEPRINT_NOT_FOUND, "deploy.blueprint", f"unknown blueprint '{deploy.blueprint}'")
        ties = parameter_ties(self.runtime.root)
        info = module_info(name, host, ties)
        inside = [module_info(sub, module, ties) for sub, module in host.named_modules(prefix=name)]
        tied = tied_parameter_error(name, inside)
        if tied is not None:
            raise Rejected(reasons.PARAMETER_TIED, tied.field, tied.reason)
        given = dict(deploy.blueprint_params)
        errors = blueprint_fit_errors(spec.proto, info, given)
        if errors:
            raise Rejected(reasons.BLUEPRINT_DOES_NOT_FIT, errors[0].field, errors[0].reason)
        params = blueprint_param_values(spec.proto, given)
        if spec.delta_fold and not has_delta_layout(host):
            raise Rejected(
                reasons.BLUEPRINT_DOES_NOT_FIT,
                "deploy.blueprint",
                f"blueprint '{deploy.blueprint}' needs a linear or Conv2d host at '{name}'",
            )
        policy = effective_policy(spec.proto, deploy.policy)
        errors = policy_errors(policy, prefix="deploy.policy")
        if errors:
            raise Rejected(reasons.INVALID_FIELD, errors[0].field, errors[0].reason)
        self._check_taps(policy)
        lr = deploy.learning_rate if deploy.HasField("learning_rate") else None
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise Rejected(reasons.INVALID_FIELD, "deploy.learning_rate", f"must be a finite number > 0, got {lr}")
        scaffold_id = deploy.scaffold_id or command.command_id
        if scaffold_id in self.runtime.live or any(
            r.scaffold["scaffold_id"] == scaffold_id for r in self.runtime.folds
        ):
            raise Rejected(
                reasons.SCAFFOLD_EXISTS, "deploy.scaffold_id", f"scaffold id '{scaffold_id}' is already in use"
            )
        region = deploy.region or region_for_module(self.regions, name) or ""
        protected = protected_region_error(region, self.regions)
        if protected is not None:
            raise Rejected(reasons.REGION_PROTECTED, protected.field, protected.reason)
        return DeployPlan(
            scaffold_id=scaffold_id,
            module_name=name,
            spec=spec,
            params=params,
            policy=policy,
            as_scaffold=deploy.as_scaffold if deploy.HasField("as_scaffold") else True,
            learning_rate=lr,
            region=region,
            command_id=command.command_id,
        )

    def _host_module(self, name: str) -> nn.Module:
        if not name:
            raise Rejected(reasons.INVALID_FIELD, "deploy.module", "must name a module")
        try:
            host = self.runtime.root.get_submodule(name)
        except AttributeError:
            raise Rejected(reasons.MODULE_NOT_FOUND, "deploy.module", f"unknown module '{name}'") from None
        if isinstance(host, Scaffold):
            raise Rejected(
                reasons.MODULE_OCCUPIED, "deploy.module", f"module '{name}' already has scaffold '{host.scaffold_id}'"
            )
        for other in self.runtime.live.values():
            if name.startswith(other.plan.module_name + "."):
                raise Rejected(
                    reasons.MODULE_OCCUPIED,
                    "deploy.module",
                    f"module '{name}' is inside scaffold '{other.scaffold_id}'",
                )
        return host

    def _check_taps(self, policy: command_pb2.ScaffoldPolicy) -> None:
        teaching = policy.teaching
        taps = [("deploy.policy.teaching.feature.taps", t) for t in teaching.feature.taps]
        if teaching.kd.logits_tap:
            taps.append(("deploy.policy.teaching.kd.logits_tap", teaching.kd.logits_tap))
        for field, tap in taps:
            try:
                self.runtime.root.get_submodule(tap)
            except AttributeError:
                raise Rejected(reasons.MODULE_NOT_FOUND, field, f"unknown module '{tap}'") from None

    # ---- references and exits --------------------------------------------------------------

    def _resolve(self, action: str, ref: command_pb2.ScaffoldRef) -> LiveScaffold:
        kind = ref.WhichOneof("ref")
        if kind == "scaffold_id":
            live = self.runtime.live.get(ref.scaffold_id)
            if live is None:
                raise Rejected(
                    reasons.SCAFFOLD_NOT_FOUND,
                    f"{action}.scaffold.scaffold_id",
                    f"no live scaffold '{ref.scaffold_id}'",
                )
        elif kind == "module":
            live = self.runtime.by_module(ref.module)
            if live is None:
                raise Rejected(
                    reasons.SCAFFOLD_NOT_FOUND,
                    f"{action}.scaffold.module",
                    f"no live scaffold on module '{ref.module}'",
                )
        else:
            raise Rejected(reasons.INVALID_FIELD, f"{action}.scaffold", "must set scaffold_id or module")
        if live.exit and action in ("fold", "prune"):
            raise Rejected(
                reasons.EXIT_IN_FLIGHT,
                f"{action}.scaffold",
                f"scaffold '{live.scaffold_id}' is already leaving ({live.exit})",
            )
        return live

    def _start_exit(self, live: LiveScaffold, kind: str, command_id: str, boundary: int) -> str:
        """Exit now where exact, else start a sunset ramp to where it is."""
        fold_kind = live.plan.spec.fold_kind
        if kind == EXIT_FOLD and fold_kind == job_pb2.FOLD_KIND_TRANSFER:
            kind = EXIT_TRANSFER
        elif kind == EXIT_FOLD and not live.plan.policy.fold.foldable:
            raise Rejected(
                reasons.INVALID_FIELD,
                "fold.scaffold",
                f"scaffold '{live.scaffold_id}' is not foldable (policy.fold.foldable)",
            )
        target = exact_alpha(kind, fold_kind)
        alpha = float(live.module.alpha)
        # sunset_ckpts 0 exits where alpha is, so a router fold's parity gap is measured, not ramped away.
        if target is None or alpha == target or live.schedule.config.sunset == 0:
            self._exit_now(live, kind, boundary)
            return f"{kind} at alpha {alpha:.6g}{self._parity_note(live.scaffold_id)}"
        live.schedule.start_sunset(target)
        live.exit, live.exit_command = kind, command_id
        self.runtime.apply_schedule(live)
        log.info("scaffold_sunset", job=self.job, scaffold_id=live.scaffold_id, exit=kind, target=target)
        if live.schedule.sunset_arrived():
            self._exit_now(live, kind, boundary)
            return f"{kind} after a one-boundary sunset to alpha {target:g}"
        return f"sunset to alpha {target:g} over {live.schedule.state.sunset_steps} boundaries, then {kind}"

    def _exit_now(self, live: LiveScaffold, kind: str, boundary: int) -> None:
        if kind == EXIT_FOLD:
            inputs = self.site_inputs(live.plan.module_name)
            before = self._site_outputs(live.module, inputs)
            try:
                self.runtime.fold(live, boundary)
            except FoldError as error:
                # The fold's result would be non-finite: G1 could not pass on it.
                raise Rejected(reasons.GATE_FAILING, "fold.scaffold", str(error)) from None
            if inputs:
                after = self._site_outputs(live.module.host, inputs)
                self.fold_parity[live.scaffold_id] = relative_change(before[0], after[0])
                if self.autocast is not None:
                    self.autocast_parity[live.scaffold_id] = relative_change(before[1], after[1])
                log.info(
                    "fold_parity",
                    job=self.job,
                    scaffold_id=live.scaffold_id,
                    parity=self.fold_parity[live.scaffold_id],
                    autocast_parity=self.autocast_parity.get(live.scaffold_id),
                )
            stage = telemetry_pb2.SCAFFOLD_STAGE_FUSED
        elif kind == EXIT_TRANSFER:
            # The host carries the seed's function only once weaned; removed before, the seed is pruned.
            weaned = live.schedule.weaned()
            stage = telemetry_pb2.SCAFFOLD_STAGE_FUSED if weaned else telemetry_pb2.SCAFFOLD_STAGE_PRUNED
            self.runtime.prune(live, stage=stage)
        else:
            self.runtime.prune(live)
            stage = telemetry_pb2.SCAFFOLD_STAGE_PRUNED
        self.on_exit(live, stage)

    def _site_outputs(self, forward: nn.Module, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """`forward` on the probe's site inputs as they are and, when the training autocasts, under autocast
        to its dtype. Eval mode, as the gates: a fold writes the eval-mode function (a BatchNorm branch's
        running statistics), and a train-mode pass would move those statistics first."""
        with eval_mode(self.runtime.root), torch.no_grad():
            outputs = [[forward(x) for x in inputs]]
            if self.autocast is not None:
                with torch.autocast(inputs[0].device.type if inputs else "cpu", dtype=self.autocast):
                    outputs.append([forward(x) for x in inputs])
        return outputs

    def _parity_note(self, scaffold_id: str) -> str:
        """The measured fold parity for a result message (also under autocast when measured); "" without."""
        parity = self.fold_parity.get(scaffold_id)
        if parity is None:
            return ""
        note = f", site parity rel err {parity:.3g}"
        autocast = self.autocast_parity.get(scaffold_id)
        if autocast is not None:
            note += f" without autocast, {autocast:.3g} under {str(self.autocast).removeprefix('torch.')} autocast"
        return note

    def finish_sunset(self, live: LiveScaffold, boundary: int) -> telemetry_pb2.CommandResult | None:
        """Take a pending exit whose sunset has arrived; a failed fold becomes a prune."""
        try:
            self._exit_now(live, live.exit, boundary)
        except Rejected as refusal:
            self._exit_now(live, EXIT_PRUNE, boundary)
            return telemetry_pb2.CommandResult(
                command_id=live.exit_command,
                outcome=telemetry_pb2.COMMAND_OUTCOME_APPLIED,
                message=f"{refusal}; pruned instead",
                boundary=boundary,
                scaffold_id=live.scaffold_id,
            )
        return None

    def _rollback(self, ref: command_pb2.ScaffoldRef, boundary: int) -> tuple[str, str]:
        kind = ref.WhichOneof("ref")
        if kind is None:
            raise Rejected(reasons.INVALID_FIELD, "rollback.scaffold", "must set scaffold_id or module")
        key = "scaffold_id" if kind == "scaffold_id" else "module"
        value = getattr(ref, kind)
        matches = [r for r in self.runtime.folds if r.scaffold[key] == value]
        if not matches:
            raise Rejected(
                reasons.ROLLBACK_UNAVAILABLE,
                f"rollback.scaffold.{kind}",
                f"no fold of {key} '{value}' among the last 2 folds",
            )
        record = matches[-1]
        module = record.scaffold["module"]
        if self.runtime.by_module(module) is not None:
            raise Rejected(
                reasons.MODULE_OCCUPIED,
                f"rollback.scaffold.{kind}",
                f"module '{module}' has a live scaffold; prune it first",
            )
        same_module = [r for r in self.runtime.folds if r.scaffold["module"] == module]
        if same_module[-1] is not record:
            raise Rejected(
                reasons.ROLLBACK_UNAVAILABLE,
                f"rollback.scaffold.{kind}",
                f"a later fold on '{module}' must be rolled back first",
            )
        live = self.runtime.rollback(record, boundary)
        return live.scaffold_id, f"restored host '{module}' and scaffold '{live.scaffold_id}'"


def exact_alpha(kind: str, fold_kind: int) -> float | None:
    """The alpha at which an exit is exact; None when exact at any alpha (delta folds)."""
    if kind == EXIT_FOLD:
        return 1.0 if fold_kind == job_pb2.FOLD_KIND_ROUTER else None
    return 0.0
