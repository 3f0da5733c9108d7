"""Safety breakers and the step-loss ring buffer, all on-device: nothing here synchronises.

* Loss breaker (`LossBreaker.check`, from `step_loss`): a non-finite step loss, or a step loss
  above `spike_factor` times the mean of the finite losses in the window, cuts the alpha of every
  live scaffold to 0 in place (`torch._foreach_mul_` by a 0/1 flag) when that step's backward
  has finished, and records the trip.
* Seed-gradient breaker (`SeedGradGuard`, a hook on each seed parameter): a non-finite gradient
  or parameter zeroes the gradient (the poisoned update never reaches the optimiser), cuts that
  scaffold's alpha at the end of the backward and records the trip.

The scaffold's forward replaces non-finite seed outputs by 0 and non-finite gradients into the
seed's input by 0, so after a cut (alpha 0) the output is exactly the host's and the host stays
finite. The worker reads the trip records at the next boundary and prunes the scaffolds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["BreakerConfig", "LossBreaker", "SeedGradGuard", "StepLossRing", "TRIP_LOSS_SPIKE", "TRIP_NON_FINITE"]

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


class _Trip:
    """An on-device trip record: kind bits and the first step that tripped (-1: none)."""

    def __init__(self, device: torch.device) -> None:
        self.kind = torch.zeros((), dtype=torch.int64, device=device)
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.full((), math.nan, dtype=torch.float32, device=device)

    def mark(self, flag: torch.Tensor, kind: torch.Tensor, step: int, value: torch.Tensor | None = None) -> None:
        """Record `kind` (already 0 where `flag` is false) at `step` when `flag` holds."""
        first = flag & (self.step < 0)
        self.step.copy_(torch.where(first, step, self.step))
        if value is not None:
            self.value.copy_(torch.where(first, value.detach().float(), self.value))
        self.kind.bitwise_or_(kind)

    def read(self) -> tuple[int, int, float]:
        """(kind bits, step, value); synchronises, boundaries only."""
        return int(self.kind), int(self.step), float(self.value)

    def reset(self) -> None:
        self.kind.zero_()
        self.step.fill_(-1)
        self.value.fill_(math.nan)


class StepLossRing:
    """The last `window` step losses on-device, written without synchronising."""

    def __init__(self, window: int, device: torch.device) -> None:
        self.window = window
        self.buffer = torch.full((window,), math.nan, dtype=torch.float32, device=device)
        self.steps = 0

    def record(self, loss: torch.Tensor) -> None:
        value = loss.detach().float().reshape(())
        self.buffer[self.steps % self.window] = torch.where(torch.isfinite(value), value, math.nan)
        self.steps += 1

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

    def check(self, loss: torch.Tensor, alphas: Sequence[torch.Tensor], step: int) -> None:
        """Judge this step's loss against the window (before recording it); no sync."""
        value = loss.detach().float().reshape(())
        bad = ~torch.isfinite(value)
        kind = bad.long() * TRIP_NON_FINITE
        if self.ring.steps >= self.config.min_history and math.isfinite(self.config.spike_factor):
            mean = torch.nanmean(self.ring.buffer)
            spike = torch.isfinite(value) & (value > self.config.spike_factor * mean)
            bad = bad | spike
            kind = kind + spike.long() * TRIP_LOSS_SPIKE
        self.trip.mark(bad, kind, step, value)
        if alphas:
            keep = (~bad).to(alphas[0].dtype)
            after_backward(loss, lambda: torch._foreach_mul_(list(alphas), keep))


class SeedGradGuard:
    """Gradient hooks on one scaffold's seed parameters: zero and cut on non-finite values."""

    def __init__(self, params: Sequence[torch.nn.Parameter], alpha: torch.Tensor, step: Callable[[], int]) -> None:
        self.alpha = alpha
        self.step = step
        self.trip = _Trip(alpha.device)
        self._handles = [p.register_hook(self._hook(p)) for p in params]

    def _hook(self, param: torch.nn.Parameter) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            ok = torch.isfinite(grad).all() & torch.isfinite(param.detach()).all()
            keep = ok.to(self.alpha.dtype)
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self.alpha.mul_(keep))
            self.trip.mark(~ok, (~ok).long() * TRIP_NON_FINITE, self.step())
            return torch.where(ok, grad, torch.zeros_like(grad))

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
