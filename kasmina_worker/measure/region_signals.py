"""Per-region signals for Narset's tactical policy (`RegionSignal`), measured at boundaries only.

* `update_ratio = ‖θ_now − θ_prev‖ / ‖θ_prev‖` over the region's host parameters, θ_prev being
  their values at the end of the previous boundary (after its commands, so a fold's write into the
  host is not counted as training movement). Keeping θ_prev costs one copy of every parameter in a
  declared region, on the parameters' device; nothing is kept when no region is declared.
* `grad_norm = ‖g‖` (L2 over the region's trainable host parameters) of the gradients present at
  the boundary, i.e. those of the last backward before it; unset when none is present (e.g.
  `zero_grad(set_to_none=True)` ran after the last step, or `host_mode` frozen holds the host).

A parameter belongs to the first declared region whose glob patterns match its module's qualified
name or, failing that, the nearest ancestor's (Narset's `region_for_module`, so both sides agree).
Seed parameters never count; a scaffolded host counts under its own name. A parameter that is new
or changed shape since the previous boundary (a router fold) is left out of that boundary's ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from kasmina_worker.seeds.scaffold import Scaffold
from narset.contract.rules import region_for_module
from narset.v1 import job_pb2, telemetry_pb2

__all__ = ["RegionTracker", "host_parameters"]


def host_parameters(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, str, nn.Parameter]]:
    """(module name, parameter name, parameter) of the host model, seeds skipped, scaffolds seen through."""
    if isinstance(root, Scaffold):
        yield from host_parameters(root.host, prefix)
        return
    for name, param in root.named_parameters(recurse=False):
        yield prefix, f"{prefix}.{name}" if prefix else name, param
    for name, child in root.named_children():
        yield from host_parameters(child, f"{prefix}.{name}" if prefix else name)


def _region_of(regions: Sequence[job_pb2.Region], module: str) -> str | None:
    parts = module.split(".") if module else []
    for end in range(len(parts), -1, -1):
        region = region_for_module(regions, ".".join(parts[:end]))
        if region is not None:
            return region
    return None


class RegionTracker:
    """Keeps each declared region's host parameters of the previous boundary; reports the signals."""

    def __init__(self, root: nn.Module, regions: Sequence[job_pb2.Region]) -> None:
        self.root = root
        self.regions = list(regions)
        self._previous: dict[str, torch.Tensor] = {}

    def _params_by_region(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        grouped: dict[str, list[tuple[str, nn.Parameter]]] = {r.name: [] for r in self.regions}
        for module, name, param in host_parameters(self.root):
            region = _region_of(self.regions, module)
            if region is not None:
                grouped[region].append((name, param))
        return grouped

    @torch.no_grad()
    def signals(self) -> list[telemetry_pb2.RegionSignal]:
        """One signal per declared region, in declaration order (fields unset where unmeasured)."""
        out = []
        for region, params in self._params_by_region().items():
            signal = telemetry_pb2.RegionSignal(region=region)
            moved, norm = [], []
            for name, param in params:
                previous = self._previous.get(name)
                if previous is not None and previous.shape == param.shape:
                    moved.append((param.detach().float() - previous.float()).pow(2).sum())
                    norm.append(previous.float().pow(2).sum())
            if norm:
                denominator = float(torch.stack(norm).sum().sqrt())
                ratio = float(torch.stack(moved).sum().sqrt()) / denominator if denominator > 0 else math.nan
                if math.isfinite(ratio):
                    signal.update_ratio = ratio
            grads = [p.grad.detach().float().pow(2).sum() for _, p in params if p.requires_grad and p.grad is not None]
            if grads:
                grad_norm = float(torch.stack(grads).sum().sqrt())
                if math.isfinite(grad_norm):
                    signal.grad_norm = grad_norm
            out.append(signal)
        return out

    @torch.no_grad()
    def snapshot(self) -> None:
        """Keep the region parameters as they are now (the end of a boundary)."""
        if not self.regions:
            return
        grouped = self._params_by_region().values()
        self._previous = {name: p.detach().clone() for params in grouped for name, p in params}
