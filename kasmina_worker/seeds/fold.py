"""Folds: write a scaffold's function into its host, keeping the exact pre-fold host tensors.

* Delta fold (lora, dense_delta, expand, conv_branch): `W += alpha · ΔW` (and `b += alpha · Δb`),
  computed in fp32 from the seed's delta-weight function, checked finite, then cast once into the
  host's dtype. `alpha` is the value the forward used (the buffer cast to the host dtype). Conv1D
  hosts get ΔWᵀ; a Conv2d host's ΔW is a kernel of its own shape [out, in / groups, kh, kw].
* Router fold (moe_expert): the router grows by the seed's row and the expert list by the seed's
  expert; the host then computes what the seed computed. Exact at alpha 1.
* Rollback restores the saved tensors bit for bit (never by subtracting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kasmina_worker.seeds.hosts import has_delta_layout, linear_layout

__all__ = ["FoldError", "FoldRecord", "ParamSwap", "fold_delta", "fold_router", "unfold_delta", "unfold_router"]


class FoldError(RuntimeError):
    """A fold that would write non-finite values into the host (nothing was written)."""


@dataclass(kw_only=True, slots=True)
class FoldRecord:
    """A reversible fold: the scaffold as it was and the exact pre-fold host tensors."""

    scaffold: dict
    """The scaffold's manifest entry at fold time (seed tensors and optimiser state included)."""
    host_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """Pre-fold host tensors by name relative to the host module."""
    boundary: int = 0

    def to_dict(self) -> dict:
        return {"scaffold": self.scaffold, "host_tensors": self.host_tensors, "boundary": self.boundary}

    @classmethod
    def from_dict(cls, data: dict) -> FoldRecord:
        return cls(scaffold=data["scaffold"], host_tensors=dict(data["host_tensors"]), boundary=data["boundary"])


def _check_finite(name: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise FoldError(f"fold of '{name}' would write non-finite values; the host is unchanged")


def _forward_alpha(alpha: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Alpha exactly as the forward applied it, in fp32."""
    return alpha.detach().to(dtype).float()


def fold_delta(module_name: str, host: nn.Module, seed: nn.Module, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fold a delta seed into a linear or Conv2d host; returns the pre-fold host tensors."""
    if not has_delta_layout(host):
        raise FoldError(f"host '{module_name}' ({type(host).__name__}) is neither a linear layer nor a Conv2d")
    a = _forward_alpha(alpha, host.weight.dtype)
    delta_w = seed.delta_weight()
    layout = linear_layout(host)
    if layout is not None and layout.transposed:
        delta_w = delta_w.t()
    if delta_w.shape != host.weight.shape:
        raise FoldError(
            f"the seed's delta {list(delta_w.shape)} does not match '{module_name}' {list(host.weight.shape)}"
        )
    new_weight = host.weight.detach().float() + a * delta_w
    _check_finite(module_name, new_weight)
    delta_b = seed.delta_bias()
    new_bias = None
    if delta_b is not None:
        if host.bias is None:
            raise FoldError(f"host '{module_name}' has no bias to take the seed's bias delta")
        new_bias = host.bias.detach().float() + a * delta_b
        _check_finite(module_name, new_bias)
    saved = {name: p.detach().clone() for name, p in host.named_parameters(recurse=False)}
    with torch.no_grad():
        host.weight.copy_(new_weight.to(host.weight.dtype))
        if new_bias is not None:
            host.bias.copy_(new_bias.to(host.bias.dtype))
    return saved


def unfold_delta(host: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Restore a delta fold's host tensors bit for bit."""
    with torch.no_grad():
        for name, param in host.named_parameters(recurse=False):
            param.copy_(saved[name].to(param.device))


@dataclass(frozen=True, slots=True)
class ParamSwap:
    """A host parameter object replaced by a fold or rollback (the optimiser must follow)."""

    old: nn.Parameter
    new: nn.Parameter


def fold_router(module_name: str, host: nn.Module, seed: nn.Module) -> tuple[dict[str, torch.Tensor], list[ParamSwap]]:
    """Append the seed's expert and router row to an MoE host; returns saved tensors and swaps."""
    router = host.router
    grown = {"weight": torch.cat([router.weight.detach(), seed.router_row.weight.detach()])}
    if router.bias is not None:
        grown["bias"] = torch.cat([router.bias.detach(), seed.router_row.bias.detach()])
    for value in grown.values():
        _check_finite(module_name, value)
    for param in seed.expert.parameters():
        _check_finite(module_name, param.detach())
    saved = {f"router.{name}": p.detach().clone() for name, p in router.named_parameters(recurse=False)}
    swaps = [_swap_param(router, name, value) for name, value in grown.items()]
    router.out_features += 1
    host.experts.append(seed.expert)
    return saved, swaps


def unfold_router(host: nn.Module, saved: dict[str, torch.Tensor]) -> tuple[nn.Module, list[ParamSwap]]:
    """Undo a router fold bit for bit; returns the removed expert and the parameter swaps."""
    router = host.router
    expert = host.experts[-1]
    del host.experts[-1]
    names = [name for name in ("weight", "bias") if f"router.{name}" in saved]
    swaps = [_swap_param(router, name, saved[f"router.{name}"]) for name in names]
    router.out_features -= 1
    return expert, swaps


def _swap_param(module: nn.Module, name: str, value: torch.Tensor) -> ParamSwap:
    """Replace `module.name` by a new parameter holding a copy of `value` (same device and requires_grad)."""
    old = getattr(module, name)
    new = nn.Parameter(value.clone().to(old.device), requires_grad=old.requires_grad)
    setattr(module, name, new)
    return ParamSwap(old, new)
