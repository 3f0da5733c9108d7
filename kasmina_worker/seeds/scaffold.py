"""The scaffold module: a host module and a seed blended by two 0-dim buffers.

`y = lerp(lerp(h, h.detach(), isolation), nan_to_num(s), alpha)`, computed by one fused autograd
function: the same graph whatever the lifecycle state. `alpha` and `isolation` change only at
boundaries (`fill_` under `no_grad`) or on-device by a safety breaker, so a compiled graph never
sees a Python float change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Scaffold", "SiteTensors"]


class _FiniteGrad(torch.autograd.Function):
    """Identity forward; backward replaces non-finite gradient entries by 0.

    Sits on the seed's input so that a poisoned seed cannot send NaN/Inf into the host upstream.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


class _Blend(torch.autograd.Function):
    """`lerp(h, nan_to_num(s), alpha)` whose backward gives h `(1 - alpha)(1 - isolation)` of the
    gradient and s `alpha` of it: the value and gradients of
    `lerp(lerp(h, h.detach(), isolation), s, alpha)` in one pass each way."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor, isolation: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(alpha, isolation)
        # The blend overwrites the sanitised copy: one fresh activation per step, like a plain lerp.
        out = torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
        return torch.lerp(h, out, alpha, out=out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        alpha, isolation = ctx.saved_tensors
        needs_h, needs_s = ctx.needs_input_grad[:2]
        grad_h = grad_s = None
        if needs_h:
            # torch functions, not `1 - alpha`: the reflected operators take a slow Python path, and
            # this runs on every backward. (1 - alpha)(1 - isolation) = keep - keep * alpha.
            keep = torch.rsub(isolation, 1)
            grad_h = torch.mul(grad, torch.addcmul(keep, keep, alpha, value=-1))
        if needs_s:
            grad_s = torch.mul(grad, alpha)
        return grad_h, grad_s, None, None


@dataclass(frozen=True, slots=True)
class SiteTensors:
    """What one forward computed at a scaffold site, for the teaching terms: host and seed outputs."""

    host_out: torch.Tensor
    seed_out: torch.Tensor


class Scaffold(nn.Module):
    """A deployed seed at the place of its host module."""

    def __init__(self, host: nn.Module, seed: nn.Module, scaffold_id: str) -> None:
        super().__init__()
        self.host = host
        self.seed = seed
        self.scaffold_id = scaffold_id
        device = next((p.device for p in host.parameters()), torch.device("cpu"))
        self.register_buffer("alpha", torch.zeros((), dtype=torch.float32, device=device))
        self.register_buffer("isolation", torch.zeros((), dtype=torch.float32, device=device))
        # Set at boundaries only, when a teaching loss needs the site tensors of the step.
        self.record_site = False
        self.site: SiteTensors | None = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.host(x, *args, **kwargs)
        s = self.seed(_FiniteGrad.apply(x), h, self.host)
        # The fp32 0-dim weights need no cast: a 0-dim tensor does not promote a bf16/fp16 blend,
        # and lerp rounds the weight to the blend's dtype exactly as a cast would (the fold uses it).
        y = _Blend.apply(h, s, self.alpha, self.isolation)
        if self.record_site:
            self.site = SiteTensors(h, s)
        return y

    def extra_repr(self) -> str:
        return f"scaffold_id={self.scaffold_id!r}"
