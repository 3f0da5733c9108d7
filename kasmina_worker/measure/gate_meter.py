"""Gate measurement at a boundary (docs/design.md, section 5): the worker measures, Narset judges.

`GateMeter.measure` runs inside `checkpoint()` only, under `no_grad`, in eval mode (each module's
mode restored), with the global RNG forked, and leaves the model bit-identical: every simulated
exit is built from private copies and swapped into the tree only for the duration of one probe
pass. It is deterministic given the model and the probe set and never communicates, so under
DDP every rank can run it in lockstep. A gate that cannot be measured (or is not finite) is left
unset, which Narset judges a failure. Definitions, per live scaffold (docs/kasmina.md, "Gates"):

* probe loss: mean of `batch_loss(model, batch)` over the probe batches (also with nothing deployed);
  for `(x, y)` batches the worker passes `loss_fn(model(x), y)`.
* G1 `transfer_rel_delta = (P_exit − P_now) / |P_now|`, `P_exit` the probe loss with the scaffold
  replaced by its simulated exit module: the delta fold on a copy of the host (lora, dense_delta),
  the router fold on a copy (moe_expert), else (transfer exits, non-foldable policies, a pending
  prune) the bare host, i.e. the scaffold bypassed. One probe pass per scaffold, except where the
  exit module gives the site's outputs bit for bit (a prune at alpha 0): then `P_exit` is `P_now`.
* G3 `foldability = 1 − ‖y_now − y_exit‖ / ‖y_now‖` at the site over the probe batches' site
  inputs; `svd_energy` (dense deltas): `Σ_{i<r} σ_i² / Σ σ_i²` of ΔW at `r = policy.fold.svd_rank`.
* G4 `jitter_p95`: p95 (linear interpolation) of `|L_t − L_{t−1}| / (|L_{t−1}| + 1e-6)` over the
  step losses in the ring since the deploy; `drift = |mean(last K) − mean(K before)|`, K = window/2,
  once 2K losses exist; `diversity = 1 − mean |corr(f_i, f_j)|`, i ≠ j, over the site's output
  features, a Conv2d site's channels (a constant feature counts as fully correlated); `host_diversity`,
  the same over the host's own output at the site on the same inputs (what the site had without the
  scaffold; the scaffold's forward computes it in the probe pass), measured only where `diversity` is
  below the policy's `diversity_min`, the one case where Narset reads it.
* the job's own loss noise, every boundary whatever is deployed (G4's reference, judged by Narset):
  `loss_noise`, p95 of `|L_t − L_{t−1}|` over the ring's window, and `loss_mean`, their mean.
* G5 `step_time_ratio`: mean step time of this interval / that of the last interval before the
  deploy (kept per scaffold); `memory_fraction`: RSS / RAM (CPU) or allocated / total (CUDA).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from kasmina_worker.measure.breakers import StepLossRing
from kasmina_worker.measure.gate_formulas import (
    diversity_index,
    drift,
    finite,
    jitter_p95,
    loss_noise,
    memory_fraction,
    put,
    relative_change,
    svd_energy,
)
from kasmina_worker.measure.region_signals import RegionTracker
from kasmina_worker.runtime.lifecycle import EXIT_PRUNE, LiveScaffold
from kasmina_worker.seeds.fold import FoldError, fold_delta, fold_router
from kasmina_worker.seeds.scaffold import Scaffold
from kasmina_worker.seeds.surgery import replace_module
from narset.v1 import job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["BoundaryMeasures", "GateConfig", "GateMeter", "eval_mode", "simulated_exit"]


@dataclass(frozen=True, kw_only=True, slots=True)
class GateConfig:
    """Bounds on the cost of gate measurement."""

    diversity_max_features: int = 512
    """Output features used by the diversity index (evenly spaced when the site has more)."""
    diversity_max_samples: int = 8192
    """Rows (probe samples × positions) used by the diversity index (evenly spaced beyond)."""

    def __post_init__(self) -> None:
        if self.diversity_max_features < 2:
            raise ValueError(f"diversity_max_features must be >= 2, got {self.diversity_max_features}")
        if self.diversity_max_samples < 2:
            raise ValueError(f"diversity_max_samples must be >= 2, got {self.diversity_max_samples}")


@dataclass(frozen=True, slots=True)
class BoundaryMeasures:
    """Everything measured at one boundary, before its commands are applied."""

    probe_loss: float | None
    gates: dict[str, telemetry_pb2.GateTelemetry]
    step_time_ms: float | None
    region_signals: list[telemetry_pb2.RegionSignal] = field(default_factory=list)
    loss_noise: float | None = None
    """p95 of the step-to-step change of the step losses in the ring (G4's reference, judged by Narset)."""
    loss_mean: float | None = None
    """The mean of those step losses."""

    def fill(self, report: worker_service_pb2.ReportBoundaryRequest) -> None:
        """Write the boundary-level measures (step time, loss noise, region signals) into the report."""
        for name in ("step_time_ms", "loss_noise", "loss_mean"):
            value = getattr(self, name)
            if value is not None:
                setattr(report, name, value)
        report.region_signals.extend(self.region_signals)


# ---- simulated exits -------------------------------------------------------------------------


def _private_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of `module` with its own copies of its own parameters (children shared)."""
    clone = copy.copy(module)
    clone._parameters = {
        name: None if p is None else nn.Parameter(p.detach().clone(), requires_grad=False)
        for name, p in module._parameters.items()
    }
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    clone._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return clone


def simulated_exit(live: LiveScaffold) -> nn.Module:
    """The module that would stand at the site right after this scaffold's exit; never mutates it.

    Delta folds and the router fold run the fold's own code on private copies; other exits
    (transfer, non-foldable, a pending prune) leave the bare host. Raises `FoldError` where the
    fold itself would refuse (non-finite result).
    """
    host, seed = live.module.host, live.module.seed
    kind = live.plan.spec.fold_kind
    if live.exit == EXIT_PRUNE or not live.plan.policy.fold.foldable:
        return host
    if live.plan.spec.delta_fold:
        clone = _private_copy(host)
        fold_delta(live.plan.module_name, clone, seed, live.module.alpha)
        return clone
    if kind == job_pb2.FOLD_KIND_ROUTER:
        clone = _private_copy(host)
        clone.router = _private_copy(host.router)
        clone.experts = nn.ModuleList(list(host.experts))
        fold_router(live.plan.module_name, clone, seed)
        return clone
    return host


def _channels_last(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A Conv2d site's outputs [N, C, H, W] with the channels last: its features are its channels, not its columns."""
    return [o.movedim(1, -1) for o in outputs]


@contextmanager
def eval_mode(root: nn.Module) -> Iterator[None]:
    """Eval mode for probe passes, each module's own mode restored after."""
    modes = [(m, m.training) for m in root.modules()]
    root.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@dataclass(slots=True)
class _Site:
    """What the probe pass saw at one scaffold: call arguments, outputs and the host's own outputs (computed by
    the scaffold's forward anyway), per probe batch."""

    calls: list[tuple[tuple, dict]] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    host_outputs: list[torch.Tensor] = field(default_factory=list)


# ---- the meter -------------------------------------------------------------------------------


class GateMeter:
    """Measures probe loss, gates, step time and region signals at boundaries."""

    def __init__(
        self,
        root: nn.Module,
        probe: Sequence[object],
        batch_loss: Callable[[nn.Module, object], torch.Tensor] | None,
        ring: StepLossRing,
        regions: Sequence[job_pb2.Region],
        config: GateConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.root = root
        self.clock = clock
        self.probe = list(probe)
        self.batch_loss = batch_loss
        self.ring = ring
        self.config = config or GateConfig()
        self.regions = RegionTracker(root, regions)
        self.device = next((p.device for p in root.parameters()), torch.device("cpu"))
        self.baselines_ms: dict[str, float | None] = {}
        """Per live scaffold: the step time of the last interval before its deploy (None: no baseline)."""
        self.last_step_time_ms: float | None = None
        self._interval_start = (self.clock(), 0)

    # ---- probe -----------------------------------------------------------------------------

    def _probe_mean(self) -> float | None:
        if not self.probe or self.batch_loss is None:
            return None
        losses = [self.batch_loss(self.root, batch).float() for batch in self.probe]
        return float(torch.stack(losses).mean())

    @contextmanager
    def _measuring(self) -> Iterator[None]:
        """no_grad, eval mode, a forked RNG, and no teaching site recording."""
        scaffolds = [m for m in self.root.modules() if isinstance(m, Scaffold)]
        recording = [(m, m.record_site, m.site) for m in scaffolds]
        devices = [self.device] if self.device.type == "cuda" else []
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(torch.random.fork_rng(devices=devices))
            stack.enter_context(eval_mode(self.root))
            for module in scaffolds:
                module.record_site = False
            try:
                yield
            finally:
                for module, record, site in recording:
                    module.record_site, module.site = record, site

    def probe_loss(self) -> float | None:
        """Whole-model probe loss (None without a probe set or loss function)."""
        with self._measuring():
            return self._probe_mean()

    def _probe_pass(self, lives: Mapping[str, LiveScaffold]) -> tuple[float | None, dict[str, _Site]]:
        """The whole-model probe loss, recording every live scaffold's site calls and outputs."""
        sites = {sid: _Site() for sid in lives}

        def keep(site: _Site) -> Callable:
            def hook(module: Scaffold, args: tuple, kwargs: dict, output: object) -> None:
                if isinstance(output, torch.Tensor):
                    site.calls.append((args, kwargs))
                    site.outputs.append(output)
                    site.host_outputs.append(module.site.host_out)

            return hook

        handles = [live.module.register_forward_hook(keep(sites[sid]), with_kwargs=True) for sid, live in lives.items()]
        for live in lives.values():
            live.module.record_site = True  # its host output, for host_diversity without another host call
        try:
            return self._probe_mean(), sites
        finally:
            for handle in handles:
                handle.remove()
            for live in lives.values():
                live.module.record_site = False

    # ---- the boundary ----------------------------------------------------------------------

    def _close_interval(self, steps: int) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started, start_steps = self._interval_start
        count = steps - start_steps
        return (self.clock() - started) * 1000.0 / count if count > 0 else None

    def measure(self, lives: Mapping[str, LiveScaffold], steps: int) -> BoundaryMeasures:
        """All measures of this boundary; `steps` is the number of `step_loss` calls so far."""
        step_time = self._close_interval(steps)
        if step_time is not None:
            self.last_step_time_ms = step_time
        memory = memory_fraction(self.device)
        gates = {sid: telemetry_pb2.GateTelemetry() for sid in lives}
        with self._measuring():
            probe, sites = self._probe_pass(lives)
            for sid, live in lives.items():
                telemetry = gates[sid]
                put(telemetry, "probe_loss", probe)
                self._stability(telemetry, live, sites[sid])
                baseline = self.baselines_ms.get(sid)
                if baseline and step_time is not None:
                    put(telemetry, "step_time_ratio", step_time / baseline)
                put(telemetry, "memory_fraction", memory)
                self._exit_gates(telemetry, live, sites[sid], probe)
        window = self.ring.since(0)
        return BoundaryMeasures(
            probe_loss=probe,
            gates=gates,
            step_time_ms=finite(step_time),
            region_signals=self.regions.signals(),
            loss_noise=loss_noise(window),
            loss_mean=finite(float(window.double().mean())) if window.numel() else None,
        )

    def _stability(self, telemetry: telemetry_pb2.GateTelemetry, live: LiveScaffold, site: _Site) -> None:
        losses = self.ring.since(live.start_step)
        put(telemetry, "jitter_p95", jitter_p95(losses))
        put(telemetry, "drift", drift(losses, self.ring.window // 2))
        bounds = (self.config.diversity_max_features, self.config.diversity_max_samples)
        features = _channels_last if isinstance(live.module.host, nn.Conv2d) else list
        put(telemetry, "diversity", diversity_index(features(site.outputs), *bounds))
        # Narset reads the host's diversity only as a lower floor for the site's (min(diversity_min, host)): a site
        # at or above diversity_min passes whatever it is, so it is measured only below.
        if not telemetry.HasField("diversity") or telemetry.diversity < live.plan.policy.gates.diversity_min:
            put(telemetry, "host_diversity", diversity_index(features(site.host_outputs), *bounds))

    def _exit_gates(
        self, telemetry: telemetry_pb2.GateTelemetry, live: LiveScaffold, site: _Site, probe: float | None
    ) -> None:
        """G1 and G3 from the simulated exit module (unset where the fold would refuse)."""
        policy = live.plan.policy
        if live.plan.spec.fold_kind == job_pb2.FOLD_KIND_LINEAR and policy.fold.HasField("svd_rank"):
            put(telemetry, "svd_energy", svd_energy(live.module.seed.delta_weight(), policy.fold.svd_rank))
        try:
            exit_module = simulated_exit(live)
        except FoldError:
            return
        unchanged = False
        if site.outputs:
            after = [exit_module(*args, **kwargs) for args, kwargs in site.calls]
            put(telemetry, "foldability", 1.0 - relative_change(site.outputs, after))
            unchanged = all(torch.equal(now, then) for now, then in zip(site.outputs, after, strict=True))
        if probe is None or probe == 0.0:
            return
        if unchanged:
            # The exit gives the site's outputs bit for bit (a prune at alpha 0, a fold of a zero delta): the probe
            # pass with it would be the one just run.
            put(telemetry, "transfer_rel_delta", 0.0)
            return
        name = live.plan.module_name
        replace_module(self.root, name, exit_module)
        try:
            after_exit = self._probe_mean()
        finally:
            replace_module(self.root, name, live.module)
        if after_exit is not None:
            put(telemetry, "transfer_rel_delta", (after_exit - probe) / abs(probe))

    def end_boundary(self, lives: Mapping[str, LiveScaffold], steps: int) -> None:
        """After the boundary's commands: baselines for new scaffolds, region snapshot, next interval."""
        self.baselines_ms = {sid: self.baselines_ms.get(sid, self.last_step_time_ms) for sid in lives}
        self.regions.snapshot()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._interval_start = (self.clock(), steps)

    # ---- checkpoint state ------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Per-scaffold step-time baselines and the last measured step time (primitives)."""
        return {"step_time_baselines_ms": dict(self.baselines_ms), "last_step_time_ms": self.last_step_time_ms}

    def load_state_dict(self, state: Mapping, steps: int, live: Iterable[str]) -> None:
        """Restore the baselines of the `live` scaffolds (none where the state has none); the next
        interval starts now, at `steps`."""
        saved = state.get("step_time_baselines_ms", {})
        self.baselines_ms = {sid: None if saved.get(sid) is None else float(saved[sid]) for sid in live}
        last = state.get("last_step_time_ms")
        self.last_step_time_ms = None if last is None else float(last)
        self._interval_start = (self.clock(), steps)
