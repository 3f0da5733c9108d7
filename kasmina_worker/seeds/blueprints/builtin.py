"""The built-in seeds for the catalogue's blueprints: lora, expand, conv_branch, dense_delta, residual_mlp,
moe_expert."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kasmina_worker.seeds.blueprints.registry import BuildContext, Seed, register_blueprint
from kasmina_worker.seeds.delta import (
    batch_norm_affine,
    centre_taps,
    conv_branch_delta_bias,
    conv_branch_delta_weight,
    conv_expand_delta,
    conv_expand_delta_weight,
    conv_lora_delta,
    conv_lora_delta_weight,
    dense_delta,
    dense_delta_weight,
    lora_delta,
    lora_delta_weight,
)
from kasmina_worker.seeds.hosts import ConvGeometry, moe_combine
from narset.contract.catalogue import BUILTIN_BLUEPRINTS

__all__ = [
    "ConvBranchSeed",
    "ConvExpandSeed",
    "ConvLoraSeed",
    "DenseDeltaSeed",
    "LoraSeed",
    "MoEExpertSeed",
    "ResidualMLPSeed",
]

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


def _conv_kernel(out_channels: int, in_per_group: int, kernel_size: tuple[int, int]) -> nn.Parameter:
    """A conv kernel initialised as nn.Conv2d initialises its own."""
    kernel = nn.Parameter(torch.empty(out_channels, in_per_group, *kernel_size))
    nn.init.kaiming_uniform_(kernel, a=math.sqrt(5))
    return kernel


class ConvLoraSeed(Seed):
    """Low-rank delta on a Conv2d, added to the host: s(x) = scaling · B ⋆ (A ⋆ x), A the host's own k×k conv
    to r channels, B a 1×1 conv r → out, both grouped as the host. B starts at zero (s = 0)."""

    additive = True

    def __init__(self, geometry: ConvGeometry, rank: int, scaling: float) -> None:
        super().__init__()
        self.geometry = geometry
        self.scaling = scaling
        groups = geometry.groups
        self.a = _conv_kernel(rank, geometry.in_channels // groups, geometry.kernel_size)
        self.b = nn.Parameter(torch.zeros(geometry.out_channels, rank // groups, 1, 1))

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        return conv_lora_delta(x, self.a, self.b, self.scaling, self.geometry)

    def delta_weight(self) -> torch.Tensor:
        return conv_lora_delta_weight(self.a, self.b, self.scaling, self.geometry.groups)

    def delta_bias(self) -> torch.Tensor | None:
        return None


class ConvExpandSeed(Seed):
    """ExpandNets' expansion of a k×k Conv2d, added to the host: s(x) = U ⋆ M ⋆ V ⋆ x, V a 1×1 conv in → p,
    M the host's own conv p → q, U a 1×1 conv q → out, grouped as the host (p = r·in, q = r·out). U starts at
    zero (s = 0); the fold contracts the three into one k×k kernel."""

    additive = True

    def __init__(self, geometry: ConvGeometry, width_factor: int) -> None:
        super().__init__()
        self.geometry = geometry
        groups = geometry.groups
        wide_in, wide_out = width_factor * geometry.in_channels, width_factor * geometry.out_channels
        self.v = _conv_kernel(wide_in, geometry.in_channels // groups, (1, 1))
        self.m = _conv_kernel(wide_out, wide_in // groups, geometry.kernel_size)
        self.u = nn.Parameter(torch.zeros(geometry.out_channels, wide_out // groups, 1, 1))

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        return conv_expand_delta(x, self.v, self.m, self.u, self.geometry)

    def delta_weight(self) -> torch.Tensor:
        return conv_expand_delta_weight(self.v, self.m, self.u, self.geometry.groups)

    def delta_bias(self) -> torch.Tensor | None:
        return None


class _ChannelScale(nn.Module):
    """A learnable per-channel scale, zero at start: the identity branch's without BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.weight.reshape(-1, 1, 1)


def _zero_batch_norm(channels: int) -> nn.BatchNorm2d:
    """A branch BatchNorm whose output starts at exactly 0 (weight and bias 0), in train and eval mode."""
    norm = nn.BatchNorm2d(channels)
    nn.init.zeros_(norm.weight)
    return norm


class ConvBranchSeed(Seed):
    """RepVGG/ACNet branches beside a k×k Conv2d, added to the host: a 1×1 conv and/or the identity, each on
    the host's centre kernel taps and each with its own BatchNorm (with bn=0: none, and a per-channel scale
    for the identity). Zero at start (BatchNorm weights and biases, or the 1×1 kernel and the scale, at 0).

    Its fold writes the eval-mode function: BatchNorm from its running statistics. In train mode a
    BatchNorm normalises each batch with that batch's statistics, which a fixed kernel cannot.
    """

    additive = True

    def __init__(self, geometry: ConvGeometry, branch_1x1: bool, identity: bool, bn: bool) -> None:
        super().__init__()
        self.geometry = geometry
        out, in_per_group = geometry.out_channels, geometry.in_channels // geometry.groups
        self.conv_1x1 = _conv_kernel(out, in_per_group, (1, 1)) if branch_1x1 else None
        if self.conv_1x1 is not None and not bn:
            nn.init.zeros_(self.conv_1x1)
        self.norm_1x1 = _zero_batch_norm(out) if branch_1x1 and bn else None
        self.norm_identity = (_zero_batch_norm(out) if bn else _ChannelScale(out)) if identity else None

    def forward(self, x: torch.Tensor, host_out: torch.Tensor, host: nn.Module) -> torch.Tensor:
        taps = centre_taps(x, self.geometry)
        outputs = []
        if self.conv_1x1 is not None:
            z = F.conv2d(taps, self.conv_1x1, groups=self.geometry.groups)
            outputs.append(z if self.norm_1x1 is None else self.norm_1x1(z))
        if self.norm_identity is not None:
            outputs.append(self.norm_identity(taps))
        return sum(outputs[1:], outputs[0])

    def _affines(self) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]]:
        """Each branch's eval-mode map: (its 1×1 kernel, None for the identity; scale; shift, None without one)."""
        branches = []
        if self.conv_1x1 is not None:
            if self.norm_1x1 is None:
                ones = torch.ones(self.geometry.out_channels, device=self.conv_1x1.device)
                branches.append((self.conv_1x1, ones, None))
            else:
                branches.append((self.conv_1x1, *_eval_affine(self.norm_1x1)))
        if isinstance(self.norm_identity, nn.BatchNorm2d):
            branches.append((None, *_eval_affine(self.norm_identity)))
        elif self.norm_identity is not None:
            branches.append((None, self.norm_identity.weight, None))
        return branches

    def delta_weight(self) -> torch.Tensor:
        return conv_branch_delta_weight(self.geometry, [(kernel, scale) for kernel, scale, _ in self._affines()])

    def delta_bias(self) -> torch.Tensor | None:
        return conv_branch_delta_bias([shift for _, _, shift in self._affines() if shift is not None])


def _eval_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_norm_affine(norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps)


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

    `fc_out` starts at zero, so the branch starts at 0. Not foldable: alpha decays to 0 while the host,
    trained jointly, takes over its function, and it leaves at alpha 0 (transfer exit).
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


def _geometry(ctx: BuildContext) -> ConvGeometry | None:
    """The host's conv geometry as the contract describes it (None: a linear host)."""
    return ConvGeometry.from_info(ctx.info.conv) if ctx.info.HasField("conv") else None


@register_blueprint(_CATALOGUE["lora"])
def build_lora(ctx: BuildContext) -> Seed:
    rank, scaling = int(ctx.params["rank"]), float(ctx.params["scaling"])
    geometry = _geometry(ctx)
    if geometry is not None:
        return ConvLoraSeed(geometry, rank, scaling)
    in_features, out_features = _linear_sizes(ctx)
    return LoraSeed(in_features, out_features, rank, scaling)


@register_blueprint(_CATALOGUE["expand"])
def build_expand(ctx: BuildContext) -> Seed:
    width_factor = int(ctx.params["width_factor"])
    geometry = _geometry(ctx)
    if geometry is not None:
        return ConvExpandSeed(geometry, width_factor)
    # On a linear host ExpandNets' product U·V with U zero at start is a LoRA of full inner width.
    in_features, out_features = _linear_sizes(ctx)
    return LoraSeed(in_features, out_features, width_factor * max(in_features, out_features), 1.0)


@register_blueprint(_CATALOGUE["conv_branch"])
def build_conv_branch(ctx: BuildContext) -> Seed:
    params = ctx.params
    return ConvBranchSeed(_geometry(ctx), bool(params["branch_1x1"]), bool(params["identity"]), bool(params["bn"]))


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
