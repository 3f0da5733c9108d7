"""The scaffold module: a host module and a seed blended by a 0-dim `alpha` buffer.

Additive seeds (delta, residual): `y = h + alpha·nan_to_num(s)`, the host at its full gradient;
replacement seeds: `y = lerp(h, nan_to_num(s), alpha)`. One fused autograd function, the same graph
whatever the lifecycle state: `alpha` changes only at boundaries (`fill_` under `no_grad`) or
on-device by a safety breaker, so a compiled graph never sees a Python float change. A frozen host
(policy `host_mode: frozen`) is its own parameters' `requires_grad`, never a detach in the blend, so
the layers upstream always get the gradient of the function the site computes.

Checkpoints any loader reads: the scaffold's `state_dict` holds only the host's entries, under the
site's own names (`c_attn.weight`, not `c_attn.host.weight`); the seed's tensors and alpha belong
to the worker's state (`KasminaWorker.state_dict`). Loading fills absent seed and alpha entries with
their current values, so a strict load of the plain model's state into a scaffolded model works;
entries under `host.` / `seed.` (checkpoints written before this rule) load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch
from torch import nn

__all__ = ["Scaffold", "SiteTensors"]

log = structlog.get_logger("kasmina")


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
    """`h + alpha·nan_to_num(s)` (additive) or `lerp(h, nan_to_num(s), alpha)` (replacement) in one
    fresh activation; backward: h gets the gradient itself (additive) or `(1 - alpha)` of it, s
    `alpha` of it.

    Hand-written so that only alpha is saved for backward (autograd's `nan_to_num` would keep s to
    mask its gradient) and the additive host gradient passes through without an op.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor, additive: bool) -> torch.Tensor:
        ctx.save_for_backward(alpha)
        ctx.additive = additive
        # The blend overwrites the sanitised copy: one fresh activation per step, like a plain add.
        out = torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
        if additive:
            return torch.addcmul(h, out, alpha, out=out)
        return torch.lerp(h, out, alpha, out=out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (alpha,) = ctx.saved_tensors
        needs_h, needs_s = ctx.needs_input_grad[:2]
        grad_h = grad_s = None
        if needs_h:
            # torch.rsub, not `1 - alpha`: the reflected operator takes a slow Python path, and this
            # runs on every backward.
            grad_h = grad if ctx.additive else torch.mul(grad, torch.rsub(alpha, 1))
        if needs_s:
            grad_s = torch.mul(grad, alpha)
        return grad_h, grad_s, None, None


@dataclass(frozen=True, slots=True)
class SiteTensors:
    """What one forward computed at a scaffold site, for the teaching terms: the host's output and
    the seed's as a replacement of it (`h.detach() + s` for an additive seed)."""

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
        self.additive = bool(getattr(seed, "additive", False))
        # Set at boundaries only, when a teaching loss needs the site tensors of the step.
        self.record_site = False
        self.site: SiteTensors | None = None
        self.register_state_dict_post_hook(_host_entries_only)
        self.register_load_state_dict_pre_hook(_load_into_host)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.host(x, *args, **kwargs)
        s = self.seed(_FiniteGrad.apply(x), h, self.host)
        # The fp32 0-dim alpha needs no cast: a 0-dim tensor does not promote a bf16/fp16 blend, and
        # addcmul / lerp round it to the blend's dtype exactly as a cast would (the fold uses that value).
        y = _Blend.apply(h, s, self.alpha, self.additive)
        if self.record_site:
            self.site = SiteTensors(h, h.detach() + s if self.additive else s)
        return y

    def extra_repr(self) -> str:
        return f"scaffold_id={self.scaffold_id!r}"


def _host_entries_only(module: Scaffold, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """`state_dict` post hook: the host's entries move to the site's own names, the seed's and alpha
    leave (the worker's state has them); version metadata follows the host's."""
    host = prefix + "host."
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        if key.startswith(host):
            state_dict[prefix + key[len(host) :]] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k.startswith(prefix + "host") or k.startswith(prefix + "seed")]:
            value = metadata.pop(key)
            if key == prefix + "host":
                metadata[prefix[:-1]] = value
            elif key.startswith(host):
                metadata[prefix + key[len(host) :]] = value
    log.warning(
        "live_scaffold_not_in_state_dict",
        scaffold_id=module.scaffold_id,
        site=prefix[:-1],
        hint="the host's weights only; the seed is in KasminaWorker.state_dict()",
    )


def _load_into_host(
    module: Scaffold, state_dict: dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """`load_state_dict` pre hook: entries under the site's own name load into the host; absent seed
    and alpha entries keep their current values (the worker restores them from its own state)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest != "alpha" and not rest.startswith(("host.", "seed.")):
            state_dict[prefix + "host." + rest] = state_dict.pop(key)
    for name, value in module.seed.state_dict(prefix=prefix + "seed.", keep_vars=True).items():
        state_dict.setdefault(name, value)
    state_dict.setdefault(prefix + "alpha", module.alpha)
