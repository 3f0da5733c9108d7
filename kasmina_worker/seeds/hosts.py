"""Host layer layouts the blueprints understand, and the documented mixture-of-experts interface.

* Linear layouts: `nn.Linear` stores `weight` as [out, in]; Hugging Face GPT-2's `Conv1D` stores it
  transposed, [in, out], and computes `x @ weight + bias`. `linear_layout` detects which, per layer.
* Conv2d hosts: `conv_geometry` reads an `nn.Conv2d`'s channels, kernel, stride, padding, dilation,
  groups and padding mode; the contract carries them as `ModuleInfo.conv` and the conv seeds are
  built from that description, so what Narset checked is what the worker builds.
* Mixture of experts: a module is an MoE host when it has `router` (an `nn.Linear` from the model
  width to one logit per expert), `experts` (an `nn.ModuleList`), an integer `top_k` and a method
  `make_expert(hidden: int | None) -> nn.Module`, and its forward equals `moe_combine` over the
  router logits and the expert outputs. `TopKMoE` is the reference implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from narset.v1 import job_pb2

__all__ = [
    "Conv1D",
    "ConvGeometry",
    "ExpertMLP",
    "LinearLayout",
    "TopKMoE",
    "conv_geometry",
    "has_delta_layout",
    "is_moe",
    "linear_layout",
    "module_info",
    "moe_combine",
    "parameter_ties",
]

MOE_TRAIT = "moe"


class Conv1D(nn.Module):
    """The transposed-weight linear layer of Hugging Face GPT-2 (`transformers.pytorch_utils.Conv1D`)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


@dataclass(frozen=True, slots=True)
class LinearLayout:
    """How a linear host stores its weight: `transposed` means [in, out] (Conv1D), else [out, in]."""

    in_features: int
    out_features: int
    transposed: bool


def linear_layout(module: nn.Module) -> LinearLayout | None:
    """The weight layout of a linear host, or None when `module` is not a linear layer."""
    if isinstance(module, nn.Linear):
        return LinearLayout(module.in_features, module.out_features, transposed=False)
    weight = getattr(module, "weight", None)
    if (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    ):
        return LinearLayout(int(weight.shape[0]), int(weight.shape[1]), transposed=True)
    return None


@dataclass(frozen=True, slots=True)
class ConvGeometry:
    """How a Conv2d host maps its input: every pair is (height, width); padding is applied on both sides."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding_mode: str

    @classmethod
    def from_info(cls, conv: job_pb2.ConvInfo) -> ConvGeometry:
        """The geometry the contract describes (checked by `narset.contract.rules` first)."""
        return cls(
            in_channels=int(conv.in_channels),
            out_channels=int(conv.out_channels),
            kernel_size=_pair(conv.kernel_size),
            stride=_pair(conv.stride),
            padding=_pair(conv.padding),
            dilation=_pair(conv.dilation),
            groups=int(conv.groups),
            padding_mode=conv.padding_mode,
        )

    def to_info(self) -> job_pb2.ConvInfo:
        return job_pb2.ConvInfo(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )


def _pair(values) -> tuple[int, int]:
    height, width = (int(v) for v in values)
    return height, width


def conv_geometry(module: nn.Module) -> ConvGeometry | None:
    """The geometry of an `nn.Conv2d`; None for any other module, or for a padding that differs between the
    two sides of an axis (`padding="same"` with an even effective kernel), which no seed reproduces."""
    if not isinstance(module, nn.Conv2d):
        return None
    # Conv2d keeps the padding it applies, string paddings ("same", "valid") resolved, as
    # [left, right, top, bottom]; symmetric padding is the only kind the contract describes.
    left, right, top, bottom = module._reversed_padding_repeated_twice
    if left != right or top != bottom:
        return None
    return ConvGeometry(
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=_pair(module.kernel_size),
        stride=_pair(module.stride),
        padding=(top, left),
        dilation=_pair(module.dilation),
        groups=module.groups,
        padding_mode=module.padding_mode,
    )


def has_delta_layout(module: nn.Module) -> bool:
    """True when a delta fold can write into `module`: a linear layer or a Conv2d with a known geometry."""
    return linear_layout(module) is not None or conv_geometry(module) is not None


def moe_combine(logits: torch.Tensor, expert_outputs: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """Top-k routing: softmax over the k largest logits, weighted sum of the chosen experts' outputs."""
    top_values, top_index = logits.topk(top_k, dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, top_index, F.softmax(top_values, dim=-1))
    stacked = torch.stack(expert_outputs, dim=-2)
    return (gates.unsqueeze(-1) * stacked).sum(dim=-2)


class ExpertMLP(nn.Module):
    """A two-layer GELU expert: width -> hidden -> width."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(width, hidden)
        self.fc_out = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class TopKMoE(nn.Module):
    """Reference mixture-of-experts layer implementing the documented router + experts interface."""

    def __init__(self, width: int, hidden: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.width = width
        self.hidden = hidden
        self.top_k = top_k
        self.router = nn.Linear(width, num_experts)
        self.experts = nn.ModuleList(ExpertMLP(width, hidden) for _ in range(num_experts))

    @property
    def in_features(self) -> int:
        return self.width

    @property
    def out_features(self) -> int:
        return self.width

    def make_expert(self, hidden: int | None) -> nn.Module:
        """A fresh expert of this layer's width (hidden width as the others when None)."""
        return ExpertMLP(self.width, hidden or self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return moe_combine(self.router(x), [expert(x) for expert in self.experts], self.top_k)


def is_moe(module: nn.Module) -> bool:
    """True when `module` implements the documented router + experts interface."""
    return (
        isinstance(getattr(module, "router", None), nn.Linear)
        and isinstance(getattr(module, "experts", None), nn.ModuleList)
        and isinstance(getattr(module, "top_k", None), int)
        and callable(getattr(module, "make_expert", None))
    )


def _feature_sizes(module: nn.Module) -> tuple[int | None, int | None]:
    layout = linear_layout(module)
    if layout is not None:
        return layout.in_features, layout.out_features
    if is_moe(module):
        return module.router.in_features, getattr(module, "out_features", module.router.in_features)
    in_features = getattr(module, "in_features", None)
    out_features = getattr(module, "out_features", None)
    return (
        in_features if isinstance(in_features, int) else None,
        out_features if isinstance(out_features, int) else None,
    )


def parameter_ties(root: nn.Module) -> dict[int, list[str]]:
    """The qualified names of each parameter that more than one module holds (a head tied to the input
    embedding, a module reused at two places), by the parameter's id; unshared parameters are left out."""
    names: dict[int, list[str]] = {}
    for module_name, module in root.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            names.setdefault(id(param), []).append(f"{module_name}.{param_name}" if module_name else param_name)
    return {key: found for key, found in names.items() if len(found) > 1}


def module_info(name: str, module: nn.Module, ties: Mapping[int, Sequence[str]] | None = None) -> job_pb2.ModuleInfo:
    """The contract's description of one host module: type, feature sizes, traits, own parameters (with
    the other names of those in `ties`, from `parameter_ties` of the root)."""
    info = job_pb2.ModuleInfo(name=name, type=type(module).__name__)
    for param_name, param in module.named_parameters(recurse=False):
        own = f"{name}.{param_name}" if name else param_name
        info.parameters.add(
            name=param_name,
            shape=list(param.shape),
            dtype=str(param.dtype).removeprefix("torch."),
            tied_to=[other for other in (ties or {}).get(id(param), ()) if other != own],
        )
    in_features, out_features = _feature_sizes(module)
    if in_features is not None:
        info.in_features = in_features
    if out_features is not None:
        info.out_features = out_features
    if is_moe(module):
        info.traits.append(MOE_TRAIT)
    geometry = conv_geometry(module)
    if geometry is not None:
        info.conv.CopyFrom(geometry.to_info())
    return info
