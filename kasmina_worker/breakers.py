"""Safety breakers and the step-loss ring buffer, all on-device: nothing here synchronises.

* Loss breaker (`LossBreaker.check`, from `step_loss`): a non-finite step loss, or a step loss
  above `spike_factor` times the mean of the finite losses in the window, cuts the alpha of every
  live scaffold to 0 in place (`torch._foreach_mul_` by a 0/1 flag) when that step's backward
  has finished, and records the trip.
* Seed breaker (`SeedGuard`, checked in the same call): a non-finite seed parameter (which is
  where a non-finite seed gradient lands after the optimiser step) cuts that scaffold's alpha
  when the step's backward has finished, and records the trip.

The scaffold's forward replaces non-finite seed outputs by 0 and non-finite gradients into the
seed's input by 0, so after a cut (alpha 0) the output is exactly the host's and the host stays
finite. The worker reads the trip records at the next boundary and prunes the scaffolds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BreakerConfig", "LossBreaker", "SeedGuard", "StepLossRing", "TRIP_LOSS_SPIKE", "TRIP_NON_FINITE"]

TRIP_NON_FINITE = 1
TRIP_LOSS_SPIKE = 2


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig:
    """Thresholds of the local safety breakers."""

    window: int = 20
    """Step losses kept on-device (the stability gate's window)."""
    spike_factor: float = 10.0
    """A step loss above this many times the window's mean is a spike; inf disables it."""
    min_history: int = 5
    """Finite losses needed in the window before spikes are judged."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if math.isnan(self.spike_factor) or self.spike_factor <= 1.0:
            raise ValueError(f"spike_factor must be > 1, got {self.spike_factor}")
        if not 1 <= self.min_history <= self.window:
            raise ValueError(f"min_history must be in [1, window={self.window}], got {self.min_history}")


NEVER = torch.iinfo(torch.int64).max


class _Trip:
    """An on-device trip record: kind bits and the first step that tripped."""

    def __init__(self, device: torch.device) -> None:
        self.kind = torch.zeros((), dtype=torch.int64, device=device)
        self.first = torch.full((), NEVER, dtype=torch.int64, device=device)

    def mark(self, flag: torch.Tensor, kind: torch.Tensor, step: int) -> None:
        """Record `kind` (already 0 where `flag` is false) at `step` when `flag` holds."""
        self.kind.bitwise_or_(kind)
        torch.minimum(self.first, torch.where(flag, step, NEVER), out=self.first)

    def read(self) -> tuple[int, int]:
        """(kind bits, first step or -1); synchronises, boundaries only."""
        kind, first = int(self.kind), int(self.first)
        return kind, -1 if first == NEVER else first

    def reset(self) -> None:
        self.kind.zero_()
        self.first.fill_(NEVER)


class StepLossRing:
    """The last `window` step losses on-device, written without synchronising."""

    def __init__(self, window: int, device: torch.device) -> None:
        self.window = window
        self.buffer = torch.full((window,), math.nan, dtype=torch.float32, device=device)
        self.steps = 0

    def record(self, value: torch.Tensor, finite: torch.Tensor) -> None:
        """Write a 0-dim fp32 step loss (NaN where not `finite`)."""
        self.buffer[self.steps % self.window] = torch.where(finite, value, math.nan)
        self.steps += 1

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


def after_backward(loss: torch.Tensor, action: Callable[[], object]) -> None:
    """Run `action` once the backward of `loss` has finished (at once if it has no backward).

    Alpha is saved for backward by the blend (also inside compiled graphs), so a cut must not
    change it between this step's forward and backward; the next forward sees it.
    """
    if not loss.requires_grad:
        action()
        return

    def queue(grad: torch.Tensor) -> torch.Tensor:
        torch.autograd.Variable._execution_engine.queue_callback(action)
        return grad

    loss.register_hook(queue)


class LossBreaker:
    """Cuts every live scaffold's alpha on a non-finite or spiking step loss."""

    def __init__(self, config: BreakerConfig, ring: StepLossRing, device: torch.device) -> None:
        self.config = config
        self.ring = ring
        self.trip = _Trip(device)

    def observe(self, loss: torch.Tensor, guards: Sequence[SeedGuard], step: int) -> None:
        """Judge this step's loss against the window and every live seed, record the loss; no sync.

        The cuts are applied to the alphas once this step's backward has finished.
        """
        value = loss.detach().reshape(()).float()
        finite = torch.isfinite(value)
        bad = ~finite
        kind = bad.long()
        if self.ring.steps >= self.config.min_history and math.isfinite(self.config.spike_factor):
            spike = value > self.config.spike_factor * torch.nanmean(self.ring.buffer)
            bad = bad | spike
            kind = kind + spike.long() * TRIP_LOSS_SPIKE
        self.trip.mark(bad, kind, step)
        self.ring.record(value, finite)
        if guards:
            alphas = [guard.alpha for guard in guards]
            keeps = [(guard.check(step) & ~bad).to(guard.alpha.dtype) for guard in guards]
            after_backward(loss, lambda: torch._foreach_mul_(alphas, keeps))


class SeedGuard:
    """Watches one scaffold's seed parameters: any non-finite value cuts that scaffold's alpha.

    One fused norm over the seed's parameters per step; a NaN/Inf gradient shows up as a
    non-finite parameter after the optimiser step and is caught at the next step. The host is
    protected meanwhile by the scaffold's forward (non-finite seed outputs and seed-input
    gradients are replaced by 0).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], alpha: torch.Tensor) -> None:
        self.params = list(params)
        self.alpha = alpha
        self.trip = _Trip(alpha.device)

    def check(self, step: int) -> torch.Tensor:
        """0-dim bool: every seed parameter is finite; records a trip when not."""
        if not self.params:
            return torch.ones((), dtype=torch.bool, device=self.alpha.device)
        ok = torch.isfinite(torch.stack(torch._foreach_norm(self.params))).all()
        bad = ~ok
        self.trip.mark(bad, bad.long(), step)
        return ok
