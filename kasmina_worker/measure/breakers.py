"""Safety breakers and the step-loss ring buffer, all on-device: nothing here synchronises per step.

Two checks per step, neither of which reads an activation, so their cost does not grow with the batch
or the width:

* `Breakers.observe` (from `step_loss`, O(1)) judges the step loss: non-finite, or more than
  `(spike_factor - 1) * |mean|` above the mean of the finite losses in the window (`spike_factor`
  times the mean for a positive mean; a job whose loss is negative is judged the same way), which
  cuts the alpha of every live scaffold to 0;
* `Breakers.before_step` (an optimiser step pre-hook, O(seed parameters)) judges each live seed's
  parameters and gradients with one fused max-norm per tensor: a non-finite one cuts that scaffold's
  alpha. It applies every cut (alpha is saved for the step's backward, also as an input of compiled
  graphs, so not before that has run), so the next forward already uses it. Then it replaces every
  non-finite entry of the seeds' parameters and gradients by 0, so the update never writes a NaN/Inf
  into a seed, its optimiser state stays finite, and a cut seed's output is finite: with alpha 0 the
  site output is exactly the host's.

A non-finite loss makes every gradient of that step non-finite, the host's included. With an
optimiser that takes AMP's on-device skip (`fused=True` Adam, AdamW, SGD, ...: every group fused),
`before_step` hands it a `found_inf` flag set by a non-finite loss or seed tensor of the step, and
the optimiser skips that update on device, as under a `GradScaler`: the host's parameters and
state are untouched by it. Other optimisers apply it (sanitising every host gradient would be a
pass over all of them per step); the scaffold is cut and its seed made finite all the same.

The worker reads the trips at the next boundary (`settle`, a sync) and prunes the cut scaffolds.
Every kernel launch and Python call here is paid on every step with cold caches after the model's
own work, so the checks are small vectors: the ring stores a non-finite loss as NaN, so
`value <= limit` is false for a non-finite loss and for a spike alike, a norm is finite iff its
tensor is, and a trip is recorded with two in-place ops for all checks at once (`alive`, 1 until a
check first fails, and `passed`, the steps observed before that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BreakerConfig", "Breakers", "StepLossRing", "TRIP_LOSS_SPIKE", "TRIP_NON_FINITE", "Trip", "Watch"]

TRIP_NON_FINITE = 1
TRIP_LOSS_SPIKE = 2
NO_LIMIT = torch.finfo(torch.float32).max


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig:
    """Thresholds of the local safety breakers."""

    window: int = 20
    """Step losses kept on-device (the stability gate's window)."""
    spike_factor: float = 10.0
    """A step loss above `mean + (spike_factor - 1) * |mean|` of the window is a spike (this many
    times the mean for a positive mean); inf disables it."""
    min_history: int = 5
    """Finite losses needed in the window before spikes are judged."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if math.isnan(self.spike_factor) or self.spike_factor <= 1.0:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if not 1 <= self.min_history <= self.window:
            raise ValueError(f"min_history must be in [1, window={self.window}], got {self.min_history}")


class StepLossRing:
    """The last `window` step losses on-device (non-finite ones as NaN), written without synchronising."""

    def __init__(self, window: int, device: torch.device) -> None:
        self.window = window
        self.buffer = torch.full((window,), math.nan, dtype=torch.float32, device=device)
        self._slots = self.buffer.unbind()
        self.steps = 0

    def record(self, loss: torch.Tensor) -> torch.Tensor:
        """Write a step loss as a 0-dim fp32, NaN where it is not finite; returns the written slot."""
        value = loss.detach()
        if value.dim() or value.dtype != torch.float32:
            value = value.reshape(()).float()
        slot = self._slots[self.steps % self.window]
        torch.nan_to_num(value, nan=math.nan, posinf=math.nan, neginf=math.nan, out=slot)
        self.steps += 1
        return slot

    def at(self, step: int) -> float | None:
        """The loss recorded at ring step `step` if still in the window; synchronises."""
        if not 0 <= self.steps - 1 - step < self.window:
            return None
        return float(self.buffer[step % self.window])

    def since(self, start_step: int) -> torch.Tensor:
        """Losses recorded from `start_step` on (at most `window`), oldest first; on-device."""
        count = min(self.steps - start_step, self.window)
        if count <= 0:
            return self.buffer[:0]
        order = [(self.steps - count + i) % self.window for i in range(count)]
        return self.buffer[order]

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.copy_(state["buffer"].to(self.buffer.device))
        self.steps = int(state["steps"])


@dataclass(frozen=True, slots=True)
class Watch:
    """One live scaffold as the breakers see it: its alpha buffer and its seed's parameters."""

    alpha: torch.Tensor
    params: Sequence[torch.Tensor]


@dataclass(frozen=True, slots=True)
class Trip:
    """What a breaker recorded since it was armed: kind bits (0: never tripped) and the first step."""

    kind: int = 0
    first: int = -1


# Rows of the check vector: the loss against the spike limit, the loss alone (finite?), then one
# row per watched seed parameter (its norm, finite iff the parameter is) and one per gradient.
_LOSS, _LOSS_FINITE, _PARAMS = 0, 1, 2


def _skips_on_device(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether `optimizer.step` skips its update on device given AMP's `found_inf` (fused groups only)."""
    return (
        optimizer is not None
        and getattr(optimizer, "_step_supports_amp_scaling", False)
        and all(group.get("fused") for group in optimizer.param_groups)
    )


class Breakers:
    """The loss breaker and the seed guards of every live scaffold, judged as small vectors per step."""

    def __init__(
        self,
        config: BreakerConfig,
        ring: StepLossRing,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
        local: Callable[[list[torch.Tensor]], list[torch.Tensor]] = list,
    ) -> None:
        """`optimizer`: the one whose steps `before_step` guards (hooked here); `local`: this rank's
        storage of a list of tensors (the local shard of a sharded one)."""
        self.config = config
        self.ring = ring
        self.device = device
        self._optimizer = optimizer
        self._local = local
        self._theirs: torch.Tensor | None = None
        self._hooks = []
        if optimizer is not None:
            self._hooks = [
                optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self.before_step()),
                optimizer.register_step_post_hook(lambda optimizer, args, kwargs: self._after_step()),
            ]
        self.arm([])

    def release(self) -> None:
        """Remove the hooks from the optimiser (the worker is closed): a later worker on it guards alone."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def arm(self, watches: Sequence[Watch]) -> None:
        """Watch these scaffolds from the next step on, with every trip cleared."""
        self._watches = list(watches)
        self._owners = [p for watch in watches for p in watch.params]
        self._params = self._local(self._owners)
        # Gradients need the same mapping per step only where it changes a tensor (a sharded one).
        self._sharded = any(p is not q for p, q in zip(self._owners, self._params, strict=True))
        # The watch of each parameter row, then of each gradient row; a seed trips when any row fails.
        param_watch = [i for i, watch in enumerate(watches) for _ in watch.params]
        self._row_watch = param_watch * 2
        rows = _PARAMS + len(self._row_watch)
        self._limits = torch.full((_PARAMS,), NO_LIMIT, dtype=torch.float32, device=self.device)
        self._alive = torch.ones(rows, dtype=torch.float32, device=self.device)
        self._passed = torch.zeros(rows, dtype=torch.float64, device=self.device)
        # Views made once, so the per-step path and the cut create no tensors for them. The cut
        # multiplies each alpha by every row of its seed, and all of them by the loss row.
        self._spike_limit = self._limits[_LOSS]
        self._loss_alive, self._seed_alive = self._alive[:_PARAMS], self._alive[_PARAMS:]
        self._cut_alphas = [watches[i].alpha for i in self._row_watch] + [watch.alpha for watch in watches]
        self._cut_factors = list(self._seed_alive.unbind()) + [self._alive[_LOSS]] * len(watches)
        # The optimiser's on-device skip, when it has one: set by a non-finite loss since its last step.
        self._skips = bool(watches) and _skips_on_device(self._optimizer)
        self._found_inf = torch.zeros((), dtype=torch.float32, device=self.device) if self._skips else None
        self._start: int | None = None
        self._step_due = False  # a loss with a graph was observed and no optimiser step has run since

    @property
    def armed(self) -> bool:
        return bool(self._watches)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Judge this step's loss and record it; no sync.

        Steps are observed one after another while armed. The cut lands at the optimiser step that
        follows (`before_step`: alpha is saved for this step's backward), or at once for a loss without
        a graph (one observed after its backward and step). When the last observed step's optimiser step
        never ran (a GradScaler skips it after an overflow, and the pre-hook with it), this loss's backward
        cuts when it is done.
        """
        if self.ring.steps >= self.config.min_history and not math.isinf(self.config.spike_factor):
            # From the mean of the window before this loss; an all-NaN window has none: no limit then.
            mean = torch.nanmean(self.ring.buffer, out=self._spike_limit)
            torch.add(mean, mean.abs(), alpha=self.config.spike_factor - 1, out=self._spike_limit)
            self._spike_limit.nan_to_num_(nan=NO_LIMIT)
        recorded = self.ring.record(loss)
        self._loss_alive.mul_(recorded <= self._limits)
        self._passed.add_(self._alive)
        if self._start is None:
            self._start = step
        if loss.grad_fn is None:
            # Observed after its own step: that step is past, so nothing is flagged for the next one.
            self._cut()
            return
        if self._step_due:
            loss.grad_fn.register_prehook(self._cut_after_backward)
        self._step_due = True
        if self._found_inf is not None:
            self._found_inf.logical_or_(recorded.isnan())

    @torch.no_grad()
    def before_step(self) -> None:
        """Judge every watched seed's parameters and gradients, cut the non-finite ones, and make every
        seed tensor finite; with an on-device-skipping optimiser, flag a non-finite step. No sync."""
        self._step_due = False
        if not self._owners:
            return
        # A parameter that got no gradient stands in for its own gradient row (a second check of it).
        grads = [p if p.grad is None else p.grad for p in self._owners]
        if self._sharded:
            grads = self._local(grads)
        tensors = self._params + grads
        # The largest magnitude: finite iff the tensor is, and unlike the 2-norm it cannot overflow on large
        # finite values (a GradScaler's scaled gradients).
        finite = torch.stack(torch._foreach_norm(tensors, ord=math.inf)) <= NO_LIMIT
        if self._found_inf is not None:
            self._found_inf.logical_or_(finite.logical_not().any())
            # A GradScaler hands a fused optimiser its still-scaled gradients and its own flag: an overflow
            # there is the scaler's to skip (and rescale), not a seed's fault.
            self._theirs = getattr(self._optimizer, "found_inf", None)
            if self._theirs is not None:
                scaled = finite[len(self._params) :]
                torch.logical_or(scaled, self._theirs > 0, out=scaled)
                # The fused kernels skip on a flag of exactly 1: the larger of the two, not their sum.
                self._optimizer.found_inf = torch.maximum(self._found_inf, self._theirs)
            else:
                self._optimizer.found_inf = self._found_inf
        self._seed_alive.mul_(finite)
        self._cut()
        for tensor in tensors:
            tensor.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)

    def _after_step(self) -> None:
        """Give the optimiser back its own `found_inf` (a GradScaler deletes it after the step)."""
        if self._found_inf is None or not self._owners:
            return
        if self._theirs is None:
            del self._optimizer.found_inf
        else:
            self._optimizer.found_inf = self._theirs
        self._theirs = None
        self._found_inf.zero_()

    def _cut_after_backward(self, grad_outputs: tuple[torch.Tensor, ...]) -> None:
        # A pre-hook on the loss's node runs as its backward starts; the cut is queued for its end, when no
        # graph still needs alpha as saved.
        torch.autograd.Variable._execution_engine.queue_callback(self._cut)

    def _cut(self) -> None:
        """alpha *= 0 where a breaker has tripped (a no-op multiply by 1 elsewhere)."""
        torch._foreach_mul_(self._cut_alphas, self._cut_factors)

    def settle(self) -> tuple[Trip, list[Trip]]:
        """The loss trip and one trip per watched scaffold since `arm`; synchronises (boundaries only)."""
        alive, passed = self._alive.tolist(), self._passed.tolist()
        start = self._start or 0

        def first(row: int) -> int:
            return -1 if alive[row] else start + int(passed[row])

        loss_first, non_finite_first = first(_LOSS), first(_LOSS_FINITE)
        kind = TRIP_NON_FINITE if non_finite_first >= 0 else 0
        if loss_first >= 0 and loss_first != non_finite_first:
            kind |= TRIP_LOSS_SPIKE
        # A seed trips at the step whose gradients or parameters were non-finite: the last one observed
        # before the optimiser step that judged them (its `passed` count includes that step).
        seed_first: dict[int, int] = {}
        for row, watch in enumerate(self._row_watch, start=_PARAMS):
            if (at := first(row)) >= 0:
                at = max(at - 1, start)
                seed_first[watch] = min(at, seed_first.get(watch, at))
        seeds = [
            Trip(TRIP_NON_FINITE, seed_first[watch]) if watch in seed_first else Trip()
            for watch in range(len(self._watches))
        ]
        return Trip(kind, loss_first), seeds
