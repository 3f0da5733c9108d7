"""The built-in seeds for the catalogue's blueprints: lora, dense_delta, residual_mlp, moe_expert."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kasmina_worker.seeds.blueprints.registry import BuildContext, Seed, register_blueprint
from kasmina_worker.seeds.delta import dense_delta, dense_delta_weight, lora_delta, lora_delta_weight
from kasmina_worker.seeds.hosts import moe_combine
from narset.contract.catalogue import BUILTIN_BLUEPRINTS

__all__ = ["DenseDeltaSeed", "LoraSeed", "MoEExpertSeed", "ResidualMLPSeed"]

_CATALOGUE = {blueprint.name: blueprint for blueprint in BUILTIN_BLUEPRINTS}


class LoraSeed(Seed):
    """Low-rank delta, added to the host: s(x) = scaling · B · A · x. B starts at zero (s = 0)."""

    additive = True

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float) -> None:
        super().__init__()
        self.scaling = scaling
        self.a = nn.Parameter(torch.empty(rank, in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        return lora_delta(x, self.a, self.b, self.scaling)

    def delta_weight(self) -> torch.Tensor:
        return lora_delta_weight(self.a, self.b, self.scaling)

    def delta_bias(self) -> torch.Tensor | None:
        return None


class DenseDeltaSeed(Seed):
    """Dense delta, added to the host: s(x) = D · x + d. D and d start at zero (s = 0)."""

    additive = True

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.d = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        return dense_delta(x, self.d, self.bias)

    def delta_weight(self) -> torch.Tensor:
        return dense_delta_weight(self.d)

    def delta_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.float()


class ResidualMLPSeed(Seed):
    """Non-linear branch added to the host: s(x) = fc_out(gelu(fc_in(x))).

    `fc_out` starts at zero, so the branch starts at 0. Not foldable: it teaches the host while
    weaning and leaves at alpha 0 (transfer exit).
    """

    additive = True

    def __init__(self, in_features: int, out_features: int, hidden: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(in_features, hidden)
        self.fc_out = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class MoEExpertSeed(Seed):
    """A new expert and its router row on a mixture-of-experts host (see `kasmina_worker.seeds.hosts`).

    A replacement seed, blended as `lerp(h, s, alpha)`: s(x) is the host layer's routing over its
    experts plus the new one, with the host's own parameters detached (the host gets `1 - alpha` of
    the site gradient, through h). The router fold appends the expert and the row to the host, after
    which the host computes s(x) itself: exact at alpha 1 (the sunset ramps there first).
    """

    def __init__(self, host: nn.Module, hidden: int | None) -> None:
        super().__init__()
        router = host.router
        self.expert = host.make_expert(hidden)
        self.router_row = nn.Linear(router.in_features, 1, bias=router.bias is not None)

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        router = host.router
        bias = None if router.bias is None else router.bias.detach()
        logits = torch.cat([F.linear(x, router.weight.detach(), bias), self.router_row(x)], dim=-1)
        outputs = [
            functional_call(expert, {n: p.detach() for n, p in expert.named_parameters()}, (x,))
            for expert in host.experts
        ]
        outputs.append(self.expert(x))
        return moe_combine(logits, outputs, host.top_k)


def _linear_sizes(ctx: BuildContext) -> tuple[int, int]:
    return int(ctx.info.in_features), int(ctx.info.out_features)


@register_blueprint(_CATALOGUE["lora"])
def build_lora(ctx: BuildContext) -> Seed:
    in_features, out_features = _linear_sizes(ctx)
    return LoraSeed(in_features, out_features, int(ctx.params["rank"]), float(ctx.params["scaling"]))


@register_blueprint(_CATALOGUE["dense_delta"])
def build_dense_delta(ctx: BuildContext) -> Seed:
    in_features, out_features = _linear_sizes(ctx)
    return DenseDeltaSeed(in_features, out_features, bias=bool(ctx.params["bias"]))


@register_blueprint(_CATALOGUE["residual_mlp"])
def build_residual_mlp(ctx: BuildContext) -> Seed:
    in_features, out_features = _linear_sizes(ctx)
    return ResidualMLPSeed(in_features, out_features, int(ctx.params["hidden"]))


@register_blueprint(_CATALOGUE["moe_expert"])
def build_moe_expert(ctx: BuildContext) -> Seed:
    hidden = int(ctx.params["hidden"])
    return MoEExpertSeed(ctx.host, hidden or None)
