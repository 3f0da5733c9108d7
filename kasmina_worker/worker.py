"""`KasminaWorker`: the training job's side of scaffolding, composed from the runtime's parts.

Per step, `step_loss` only adds teaching terms and records the loss on-device. At a boundary,
`checkpoint` (1) reads the breakers and prunes what they cut, (2) builds the report, (3) gets the
commands due now from the local queue and the transport, (4) applies them in order, (5) advances
the schedules, and (6) returns a `BoundarySummary`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import structlog
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from kasmina_worker.link.narset_transport import NarsetTransport
from kasmina_worker.link.registration import attach_request
from kasmina_worker.link.report import BoundarySummary, scaffold_report, summary_of
from kasmina_worker.link.transport import CommandSource, LocalQueue
from kasmina_worker.measure.breakers import (
    TRIP_LOSS_SPIKE,
    TRIP_NON_FINITE,
    BreakerConfig,
    Breakers,
    StepLossRing,
    Watch,
)
from kasmina_worker.measure.gate_meter import GateConfig, GateMeter, eval_mode
from kasmina_worker.parallel.distributed import (
    DistributedConfig,
    broadcast_commands,
    broadcast_seed_buffers,
    check_agreement,
    rank_info,
    reduce_measures,
    reduce_trips,
)
from kasmina_worker.parallel.rebuild import Rebuilder, full_state, local_tensors
from kasmina_worker.runtime import state as state_io
from kasmina_worker.runtime.commands import CommandApplier
from kasmina_worker.runtime.lifecycle import LiveScaffold, ScaffoldRuntime
from kasmina_worker.runtime.optim import seed_group_order
from kasmina_worker.runtime.teaching import ProbeLoss, Teacher, TeachingSite
from kasmina_worker.seeds.scaffold import Scaffold
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["KasminaWorker", "WorkerConfig"]

log = structlog.get_logger("kasmina")

TRIP_NAMES = {TRIP_NON_FINITE: "non_finite", TRIP_LOSS_SPIKE: "loss_spike"}


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerConfig:
    """Worker options."""

    breakers: BreakerConfig = field(default_factory=BreakerConfig)
    """Safety breaker thresholds and the step-loss window."""
    probe_batches: int = 20
    """Probe batches evaluated by `probe_loss` (the first ones of `probe`)."""
    narset_timeout_s: float = 5.0
    """Longest a boundary waits for Narset (per call) before training goes on without it."""
    gates: GateConfig = field(default_factory=GateConfig)
    """Bounds on gate measurement (see `kasmina_worker.measure.gate_meter`)."""
    clock: Callable[[], float] = time.perf_counter
    """Monotonic clock (seconds) that G5's step time is measured with; tests pass a fake one."""
    autocast: torch.dtype | None = None
    """The dtype the training's autocast computes in (e.g. `torch.bfloat16`); None without autocast. A fold's
    parity is then measured under autocast to it as well as without, both in the fold's result message."""
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    """The probe loss of one probe batch, `batch_loss(model, batch) -> scalar`, for batches of any form (a
    Hugging Face dict with `input_ids`, `attention_mask`, `labels`: `lambda m, b: m(**b).loss`); instead of
    the worker's `loss_fn(model(x), y)`, which needs `(x, y)` batches."""

    def __post_init__(self) -> None:
        if self.probe_batches < 1:
            raise ValueError(f"probe_batches must be >= 1, got {self.probe_batches}")
        if not self.narset_timeout_s > 0:
            raise ValueError(f"narset_timeout_s must be > 0, got {self.narset_timeout_s}")


def _probe_loss_of(
    probe: Sequence[Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None,
) -> Callable[[nn.Module, Any], torch.Tensor] | None:
    """One probe batch's loss as `f(model, batch)`: `batch_loss`, or `loss_fn` on an `(x, y)` pair."""
    if batch_loss is not None:
        if loss_fn is not None:
            raise ValueError("give loss_fn (for (x, y) batches) or config.batch_loss (any batch), not both")
        return batch_loss
    for i, batch in enumerate(probe):
        if not (isinstance(batch, Sequence) and len(batch) == 2):
            raise ValueError(
                f"probe batch {i} is a {type(batch).__name__}, not an (x, y) pair: "
                "give WorkerConfig(batch_loss=lambda model, batch: ...) for batches of another form"
            )
    if loss_fn is None:
        return None
    return lambda model, batch: loss_fn(model(batch[0]), batch[1])


def _regions(regions: Sequence[job_pb2.Region] | Mapping[str, Sequence[str]] | None) -> list[job_pb2.Region]:
    if regions is None:
        return []
    if isinstance(regions, Mapping):
        return [job_pb2.Region(name=name, patterns=list(patterns)) for name, patterns in regions.items()]
    return list(regions)


class KasminaWorker:
    """Deploys, schedules, teaches, folds and removes scaffolds in a training job's model."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        job: str,
        narset: str | None = None,
        probe: Iterable[Any] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        regions: Sequence[job_pb2.Region] | Mapping[str, Sequence[str]] | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        *,
        transport: CommandSource | None = None,
        probe_losses: Sequence[ProbeLoss] = (),
        config: WorkerConfig | None = None,
        distributed: DistributedConfig | None = None,
        narset_token: str | None = None,
        scheduler: LRScheduler | None = None,
    ) -> None:
        if not job:
            raise ValueError("job must be a non-empty job id, got ''")
        self.job = job
        self.narset = narset
        self.config = config or WorkerConfig()
        # Rank 0 alone talks to the command sources; see kasmina_worker/parallel/distributed.py.
        self._dist_config = distributed or DistributedConfig()
        self._rank = rank_info(self._dist_config.group)
        self._root = model
        self._optimizer = optimizer
        self._probe = list(islice(probe, self.config.probe_batches)) if probe is not None else []
        batch_loss = _probe_loss_of(self._probe, loss_fn, self.config.batch_loss)
        # A fold's parity needs only the site inputs: one forward per probe batch, with or without a loss.
        self._probe_forward = batch_loss or (lambda model, batch: model(batch[0]))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self._steps = 0
        self._ring = StepLossRing(self.config.breakers.window, device)
        self._breakers = Breakers(self.config.breakers, self._ring, device, optimizer, local_tensors)
        self._runtime = ScaffoldRuntime(model, optimizer, job, self._ring)
        if scheduler is not None:
            self.attach_scheduler(scheduler)
        job_regions = _regions(regions)
        self._applier = CommandApplier(
            self._runtime,
            job,
            job_regions,
            on_exit=self._on_exit,
            site_inputs=self._site_inputs,
            autocast=self.config.autocast,
        )
        self._queue = LocalQueue()
        if narset is not None and transport is None and self._rank.leader:
            # The token attaches the job (else $NARSET_TOKEN); TLS files come from NARSET_TLS_* as for the CLI.
            transport = NarsetTransport(narset, self._registration, self.config.narset_timeout_s, narset_token)
        self._transport = transport
        self._teacher = Teacher(model, probe_losses)
        self._meter = GateMeter(
            model, self._probe, batch_loss, self._ring, job_regions, self.config.gates, self.config.clock
        )
        self._boundary = 0
        self._exits: list[telemetry_pb2.ScaffoldReport] = []
        self._unreported_reports: list[telemetry_pb2.ScaffoldReport] = []
        self._unreported_results: list[telemetry_pb2.CommandResult] = []
        self._wrap = wrap
        self._rebuilder = Rebuilder(model, optimizer, wrap, job)
        self._wrapped = self._rebuilder.model
        self._wrapped_version = self._runtime.structure_version

    # ---- the training loop's API -----------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """What to train: the user's model (or `wrap(model)`), re-wrapped after structural changes."""
        if self._wrap is None:
            return self._root
        if self._wrapped_version != self._runtime.structure_version:
            self._sync_wrapper(changed=True)
        return self._wrapped

    @property
    def rebuilds(self) -> int:
        """How many times `wrap` was re-applied after a structural change (0 without `wrap`)."""
        return self._rebuilder.rebuilds

    @property
    def boundary(self) -> int:
        """The last completed boundary (0 before the first `checkpoint`)."""
        return self._boundary

    @property
    def applied_command_ids(self) -> tuple[str, ...]:
        return tuple(self._applier.applied)

    @property
    def scaffolds(self) -> Mapping[str, Scaffold]:
        """Live scaffold modules by scaffold id."""
        return {sid: live.module for sid, live in self._runtime.live.items()}

    def attach_scheduler(self, scheduler: LRScheduler) -> None:
        """Keep `scheduler` (any `torch.optim.lr_scheduler` scheduler of this worker's optimiser) working
        as seed groups join and leave: its per-group lists gain and lose their entries with the groups.
        For one created after the worker (a trainer's lazy one), attach it before the next boundary."""
        self._runtime.rates.attach(scheduler)

    def submit(self, command: command_pb2.AdaptationCommand) -> str:
        """Queue a command for the next boundary; returns its command id (assigned when empty).

        In a distributed job only rank 0's queue counts: its commands are broadcast to every rank.
        Other ranks' submissions are ignored (so an SPMD script may submit on every rank).
        """
        return self._queue.submit(command)

    def step_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Add the teaching terms and record the step loss on-device; `loss` itself when idle. One call per
        optimiser step; with gradient accumulation, `teaching_terms` per micro-batch and `end_step` per step."""
        extra = self.teaching_terms()
        self.end_step(loss)
        return loss if extra is None else loss + extra

    def teaching_terms(self) -> torch.Tensor | None:
        """The teaching terms of the forward just run (None when there are none), for the step in progress;
        records nothing. Add them to each micro-batch's loss at the scale the loss has."""
        return self._teacher.terms(self._steps + 1) if self._teacher.active else None

    def end_step(self, loss: torch.Tensor) -> None:
        """Count one optimiser step and record its loss, at the scale of one step (the mean over its
        micro-batches, not a micro-batch's share), for the breakers and G4; no sync. Called before that loss's
        backward, the breakers cut after it; with a detached loss after the step, they cut at once."""
        self._steps += 1
        if self._breakers.armed:
            self._breakers.observe(loss, self._steps - 1)
        else:
            # Recorded idle too (one on-device copy, no sync): the job's own loss noise is G4's reference.
            self._ring.record(loss)

    def step_losses(self, scaffold_id: str) -> torch.Tensor:
        """The scaffold's step losses in the window since its deploy, oldest first, on-device."""
        return self._ring.since(self._runtime.live[scaffold_id].start_step)

    def probe_loss(self) -> float | None:
        """Mean probe loss over the probe batches in eval mode; None without a probe or a loss function."""
        return self._meter.probe_loss()

    @torch.no_grad()
    def _site_inputs(self, module_name: str) -> list[torch.Tensor]:
        """The inputs a module receives on the probe batches (empty without a probe)."""
        if not self._probe:
            return []
        seen: list[torch.Tensor] = []
        site = self._root.get_submodule(module_name)
        handle = site.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
        try:
            with eval_mode(self._root):
                for batch in self._probe:
                    self._probe_forward(self._root, batch)
        finally:
            handle.remove()
        return seen

    # ---- the boundary ----------------------------------------------------------------------

    def checkpoint(self, step: int, metrics: Mapping[str, float] | None = None) -> BoundarySummary:
        """One boundary: breakers, report, exchange, apply, advance; returns the summary."""
        k = self._boundary + 1
        self._exits = []
        events = self._collect_trips()
        if self._runtime.live:
            self._rebuilder.unwrap_if_sharded()
            broadcast_seed_buffers([live.module.seed for live in self._runtime.live.values()], self._rank)
        measures = self._meter.measure(self._runtime.live, self._steps)
        probe, gates = reduce_measures(measures.probe_loss, measures.gates, self._rank), measures.gates
        report = self._report(k, step, metrics or {}, probe, gates, events)
        measures.fill(report)
        reported_exits = len(self._exits)
        commands = self._exchange(report)
        if commands:
            self._rebuilder.unwrap_if_sharded()
        before = {sid: live.schedule.in_sunset for sid, live in self._runtime.live.items()}
        results = [self._applier.apply(command, k) for command in commands]
        results.extend(self._advance(before, k))
        for sid, parity in self._applier.fold_parity.items():
            gates.setdefault(sid, telemetry_pb2.GateTelemetry()).foldability = 1.0 - parity
        self._applier.fold_parity.clear()
        self._applier.autocast_parity.clear()
        self._boundary = k
        self._configure_teaching()
        check_agreement(self._root, self._applier.applied, k, self._rank, self._dist_config)
        self._sync_wrapper(changed=self._wrapped_version != self._runtime.structure_version)
        self._meter.end_boundary(self._runtime.live, self._steps)
        self._unreported_results = list(results)
        self._unreported_reports = self._exits[reported_exits:]
        live_reports = [scaffold_report(live) for live in self._runtime.live.values()]
        summary = BoundarySummary(
            boundary=k,
            step=step,
            scaffolds=tuple(summary_of(r) for r in live_reports + self._exits),
            results=tuple(results),
            events=tuple(events),
            probe_loss=probe,
            gates=gates,
            report=report,
        )
        log.info("boundary", job=self.job, boundary=k, step=step, live=len(self._runtime.live), commands=len(results))
        return summary

    def _exchange(self, report: worker_service_pb2.ReportBoundaryRequest) -> list[command_pb2.AdaptationCommand]:
        """Rank 0's commands (its local queue, then its transport), the same on every rank."""
        commands = list(self._queue.exchange(report))
        if not self._rank.leader:
            if commands:
                log.debug("submit_ignored", job=self.job, rank=self._rank.rank, commands=len(commands))
            commands = []
        elif self._transport is not None:
            commands.extend(self._transport.exchange(report))
        return broadcast_commands(commands, self._rank)

    def _sync_wrapper(self, changed: bool) -> None:
        """Rebuild the wrapper after a structural change (collective), then arm the breakers on the
        live scaffolds and the parameters the (re)built wrapper trains, trips cleared."""
        self._rebuilder.finish(changed)
        self._wrapped = self._rebuilder.model
        self._wrapped_version = self._runtime.structure_version
        self._breakers.arm(
            [Watch(live.module.alpha, list(live.module.seed.parameters())) for live in self._runtime.live.values()]
        )

    def _report(
        self,
        k: int,
        step: int,
        metrics: Mapping[str, float],
        probe: float | None,
        gates: Mapping[str, telemetry_pb2.GateTelemetry],
        events: list[telemetry_pb2.SafetyEvent],
    ) -> worker_service_pb2.ReportBoundaryRequest:
        report = worker_service_pb2.ReportBoundaryRequest(job_id=self.job, boundary=k, step=step)
        report.metrics.update({name: float(value) for name, value in metrics.items()})
        if probe is not None:
            report.probe_loss = probe
        report.scaffolds.extend(self._unreported_reports)
        report.scaffolds.extend(scaffold_report(live, gates=gates[sid]) for sid, live in self._runtime.live.items())
        report.scaffolds.extend(self._exits)
        report.results.extend(self._unreported_results)
        report.safety_events.extend(events)
        self._unreported_reports, self._unreported_results = [], []
        return report

    def _collect_trips(self) -> list[telemetry_pb2.SafetyEvent]:
        """Read the breakers (a sync, boundaries only; OR-ed over the ranks, so that every rank prunes
        the same scaffolds) and prune every cut scaffold."""
        if not self._breakers.armed:
            return []
        local_loss_trip, seed_trips = self._breakers.settle()
        loss_trip, *seed_trips = reduce_trips([local_loss_trip, *seed_trips], self._rank)
        # The tripping loss is in this rank's ring only if this rank tripped first (and not too long ago).
        local = loss_trip.kind and local_loss_trip.first == loss_trip.first
        loss_value = self._ring.at(self._ring.steps - (self._steps - loss_trip.first)) if local else None
        detail = f"step loss {loss_value:.6g}" if loss_value is not None else "step loss"
        loss_found = [(bit, loss_trip.first, detail) for bit in TRIP_NAMES if loss_trip.kind & bit]
        events = []
        for live, seed_trip in zip(list(self._runtime.live.values()), seed_trips, strict=True):
            found = list(loss_found)
            if seed_trip.kind:
                found.append((TRIP_NON_FINITE, seed_trip.first, "non-finite seed parameter or gradient"))
            if not found:
                continue
            gates = telemetry_pb2.GateTelemetry()
            for bit, at_step, what in found:
                events.append(
                    telemetry_pb2.SafetyEvent(
                        scaffold_id=live.scaffold_id, kind=TRIP_NAMES[bit], step=at_step, detail=what
                    )
                )
                gates.non_finite |= bit == TRIP_NON_FINITE
                gates.loss_spike |= bit == TRIP_LOSS_SPIKE
            log.warning(
                "breaker_tripped", job=self.job, scaffold_id=live.scaffold_id, kinds=[TRIP_NAMES[b] for b, *_ in found]
            )
            self._runtime.prune(live)
            self._exits.append(scaffold_report(live, stage=telemetry_pb2.SCAFFOLD_STAGE_PRUNED, gates=gates))
        return events

    def _advance(self, before: Mapping[str, bool], k: int) -> list[telemetry_pb2.CommandResult]:
        """Advance every scaffold that was live before this boundary's commands and not just changed."""
        results = []
        for sid, live in list(self._runtime.live.items()):
            if sid not in before or (live.schedule.in_sunset and not before[sid]):
                continue
            live.schedule.advance()
            if live.exit and live.schedule.sunset_arrived():
                self._runtime.apply_schedule(live)
                result = self._applier.finish_sunset(live, k)
                if result is not None:
                    results.append(result)
            else:
                self._runtime.apply_schedule(live)
        return results

    def _on_exit(self, live: LiveScaffold, stage: int) -> None:
        self._exits.append(scaffold_report(live, stage=stage))

    def _configure_teaching(self) -> None:
        """Fix this interval's teaching sites (stages change only at boundaries)."""
        self._teacher.configure(
            [
                TeachingSite(
                    module=live.module,
                    teaching=live.plan.policy.teaching,
                    stage=live.schedule.stage(),
                )
                for live in self._runtime.live.values()
            ]
        )

    # ---- the control plane -----------------------------------------------------------------

    def _registration(self) -> worker_service_pb2.AttachRequest:
        """What this job tells Narset at (re-)attach, including the state it resumed from."""
        return attach_request(
            job=self.job,
            root=self._root,
            regions=self._applier.regions,
            wrapper=type(self._wrapped).__name__ if self._wrap is not None else "",
            boundary=self._boundary,
            applied=self._applier.applied,
            scaffolds=[scaffold_report(live) for live in self._runtime.live.values()],
        )

    def close(self) -> None:
        """Detach from Narset and stop the link process (bounded), and take the worker's hooks off the
        optimiser (a closed worker guards and schedules nothing); safe twice."""
        close = getattr(self._transport, "close", None)
        if close is not None:
            close()
        self._breakers.release()
        self._runtime.rates.release()

    def __enter__(self) -> KasminaWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- checkpoint state ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The worker's state in primitives and tensors (`torch.load(weights_only=True)` safe), live seeds'
        tensors included (the model's own `state_dict` holds only the host's). Under FSDP2 every rank calls it."""
        state = state_io.build_state(
            job=self.job,
            boundary=self._boundary,
            steps=self._steps,
            applied=self._applier.applied,
            scaffolds=[
                {**live.manifest(), "seed_state": full_state(live.module.seed)} for live in self._runtime.live.values()
            ],
            folds=[record.to_dict() for record in self._runtime.folds],
            growth=self._runtime.growth,
            group_order=seed_group_order(self._optimizer),
            ring=self._ring.state_dict(),
            queue=self._queue.state_dict(),
            unreported_results=self._unreported_results,
            unreported_reports=self._unreported_reports,
        )
        state["gates"] = self._meter.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Rebuild the scaffolds and optimiser groups of `state` on this (fresh) worker's model.

        The live seeds' tensors come from `state`; the host's from the model's checkpoint, loaded before or
        after this call (`model.load_state_dict(..., strict=True)`); `optimizer.load_state_dict` comes after.
        """
        if self._runtime.live or self._boundary:
            raise RuntimeError("load_state_dict needs a fresh worker (no boundary yet, nothing deployed)")
        loaded = state_io.parse_state(state, job=self.job)
        self._rebuilder.unwrap_if_sharded()
        self._runtime.regrow(loaded.growth)
        for entry in loaded.scaffolds_in_group_order():
            # Checkpoints written before the seed left the model's state_dict have no seed_state: the model's has it.
            self._runtime.restore(entry, seed_state=entry.get("seed_state"), optimizer_state=None)
        self._runtime.folds = loaded.folds
        self._applier.applied = list(loaded.applied)
        self._boundary = loaded.boundary
        self._steps = loaded.steps
        self._ring.load_state_dict(loaded.ring)
        self._queue.load_state_dict(loaded.queue)
        self._unreported_results = list(loaded.unreported_results)
        self._unreported_reports = list(loaded.unreported_reports)
        self._meter.load_state_dict(state.get("gates", {}), self._steps, self._runtime.live)
        self._configure_teaching()
        self._sync_wrapper(changed=True)
        log.info("worker_restored", job=self.job, boundary=self._boundary, live=len(self._runtime.live))
