"""The blueprint registry: a contract description (`job_pb2.Blueprint`) plus a seed factory.

Users add blueprints with the decorator:

    @register_blueprint(job_pb2.Blueprint(name="my_seed", host_types=["Linear"], ...))
    def build_my_seed(ctx: BuildContext) -> Seed: ...

Compatibility with a host is the catalogue's `blueprint_fit_errors` over the host's `ModuleInfo`
(host type, traits, feature sizes, parameter ranges), so a refusal names the mismatch.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from narset.v1 import job_pb2

__all__ = [
    "DELTA_FOLDS",
    "BlueprintSpec",
    "BuildContext",
    "Seed",
    "blueprint_names",
    "get_blueprint",
    "register_blueprint",
]


class Seed(nn.Module):
    """A seed module: `forward(x, host_out, host)` returns the seed's output s(x) at the site.

    An *additive* seed (`additive = True`: delta and residual seeds) returns a branch added to the
    host's output, `y = h(x) + alpha·s(x)`; the host keeps its full gradient. Otherwise the seed is a
    *replacement* of the host, `y = lerp(h(x), s(x), alpha)`. Delta seeds also implement
    `delta_weight()` (fp32, [out, in] for a linear host, the host's kernel shape for a Conv2d) and
    `delta_bias()` (fp32 or None): `s(x) = ΔW·x + Δb` (the conv of x with ΔW, plus Δb, on a Conv2d).
    """

    additive: ClassVar[bool] = False

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        raise NotImplementedError


# The fold kinds whose seeds are linear maps written into the host as a weight delta (fold.fold_delta).
DELTA_FOLDS = (job_pb2.FOLD_KIND_LINEAR, job_pb2.FOLD_KIND_LORA, job_pb2.FOLD_KIND_REPARAM)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """Everything a seed factory gets: the host, its description and the blueprint parameters."""

    host: nn.Module
    info: job_pb2.ModuleInfo
    params: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class BlueprintSpec:
    """A registered blueprint: its contract description and the factory building its seed."""

    proto: job_pb2.Blueprint
    factory: Callable[[BuildContext], Seed]

    @property
    def fold_kind(self) -> int:
        """The blueprint's fold (the first listed), a `job_pb2.FoldKind`."""
        return self.proto.folds[0] if self.proto.folds else job_pb2.FOLD_KIND_TRANSFER

    @property
    def delta_fold(self) -> bool:
        """True when the seed leaves by a delta fold, `W += alpha·ΔW` from its `delta_weight()`."""
        return self.fold_kind in DELTA_FOLDS

    def build(self, ctx: BuildContext, init_seed: str) -> Seed:
        """Build the seed deterministically from `init_seed`, without touching the global RNG."""
        host_param = next(ctx.host.parameters(), None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(init_seed.encode()))
            seed = self.factory(ctx)
        if host_param is not None:
            seed = seed.to(device=host_param.device, dtype=host_param.dtype)
        return seed


_REGISTRY: dict[str, BlueprintSpec] = {}


def register_blueprint(proto: job_pb2.Blueprint) -> Callable[[Callable[[BuildContext], Seed]], Callable]:
    """Decorator registering a seed factory under `proto.name` (a later registration replaces it)."""
    if not proto.name:
        raise ValueError("blueprint name must be non-empty, got ''")

    def decorate(factory: Callable[[BuildContext], Seed]) -> Callable[[BuildContext], Seed]:
        _REGISTRY[proto.name] = BlueprintSpec(proto=proto, factory=factory)
        return factory

    return decorate


def get_blueprint(name: str) -> BlueprintSpec | None:
    """The registered blueprint called `name`, or None."""
    return _REGISTRY.get(name)


def blueprint_names() -> list[str]:
    """Names of every registered blueprint, sorted."""
    return sorted(_REGISTRY)
