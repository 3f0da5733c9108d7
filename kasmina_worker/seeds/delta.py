"""Pure delta functions of the delta seeds, shared by the forward, the fold and the gates.

Each delta seed is a linear map of its input. `*_delta` computes it on activations (the forward);
`*_delta_weight` gives the same map as a dense weight in the host's own layout (the fold and the
gates): [out, in] for a linear host, [out, in / groups, kh, kw] for a Conv2d. The forwards use the
factors (cheaper); both functions use the same factors and scaling, and the fold tests pin their
agreement.

Conv2d seeds see the host's geometry (`ConvGeometry`) and keep its grouping: every factor is a
grouped conv with the host's groups, so the contracted kernel connects only what the host's does.
`conv_branch` is the one seed whose forward is not linear in training: its BatchNorms normalise a
training batch with the batch's statistics. Its delta weight is the eval-mode map (BatchNorm from
the running statistics), which is what its fold writes (docs/kasmina.md, "Conv2d hosts").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kasmina_worker.seeds.hosts import ConvGeometry

__all__ = [
    "batch_norm_affine",
    "centre_taps",
    "conv2d",
    "conv_branch_delta_bias",
    "conv_branch_delta_weight",
    "conv_expand_delta",
    "conv_expand_delta_weight",
    "conv_lora_delta",
    "conv_lora_delta_weight",
    "dense_delta",
    "dense_delta_weight",
    "lora_delta",
    "lora_delta_weight",
]


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """LoRA delta on activations: `scaling · B · A · x`, with A [rank, in] and B [out, rank]."""
    return F.linear(F.linear(x, a), b) * scaling


def lora_delta_weight(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """The same delta as a dense [out, in] weight, computed in fp32."""
    return (b.float() @ a.float()) * scaling


def dense_delta(x: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Dense delta on activations: `D · x + d`, with D [out, in]."""
    return F.linear(x, d, bias)


def dense_delta_weight(d: torch.Tensor) -> torch.Tensor:
    """The dense delta's weight as [out, in], in fp32."""
    return d.float()


def conv2d(x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """`weight` applied as the host applies its own: its stride, padding (and padding mode), dilation, groups."""
    if geometry.padding_mode == "zeros":
        padding = geometry.padding
    else:
        # nn.Conv2d pads explicitly for the other modes and convolves without padding; so does this.
        pad_h, pad_w = geometry.padding
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=geometry.padding_mode)
        padding = (0, 0)
    return F.conv2d(x, weight, None, geometry.stride, padding, geometry.dilation, geometry.groups)


def _grouped_product(left: torch.Tensor, right: torch.Tensor, groups: int) -> torch.Tensor:
    """Per group, `left_g [o/g, m/g] @ right_g [m/g, ...]`, stacked as [o, ...], in fp32.

    `left` is a grouped 1×1 kernel [o, m/g, 1, 1] and `right` a grouped kernel [m, c/g, kh, kw]: the
    result is the grouped kernel [o, c/g, kh, kw] of `left` applied after `right`.
    """
    out, middle = left.shape[0], right.shape[0]
    product = torch.bmm(
        left.float().reshape(groups, out // groups, middle // groups),
        right.float().reshape(groups, middle // groups, -1),
    )
    return product.reshape(out, *right.shape[1:])


def conv_lora_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, geometry: ConvGeometry
) -> torch.Tensor:
    """Conv LoRA on activations: `scaling · B ⋆ (A ⋆ x)`, A [r, in/g, kh, kw] the host's own conv to r
    channels, B [out, r/g, 1, 1] a 1×1 conv, both with the host's g groups."""
    return F.conv2d(conv2d(x, a, geometry), b, groups=geometry.groups) * scaling


def conv_lora_delta_weight(a: torch.Tensor, b: torch.Tensor, scaling: float, groups: int) -> torch.Tensor:
    """The same delta as one [out, in/g, kh, kw] kernel, in fp32 (a 1×1 conv after a conv is their product)."""
    return _grouped_product(b, a, groups) * scaling


def conv_expand_delta(
    x: torch.Tensor, v: torch.Tensor, m: torch.Tensor, u: torch.Tensor, geometry: ConvGeometry
) -> torch.Tensor:
    """ExpandNets' conv expansion on activations: `U ⋆ M ⋆ V ⋆ x`, V [p, in/g, 1, 1] and U [out, q/g, 1, 1]
    1×1 convs, M [q, p/g, kh, kw] the host's own conv, all with the host's g groups.

    V runs before the host's padding: a 1×1 conv without bias maps a zero (or reflected, replicated,
    wrapped) border pixel to the same kind of pixel, so the product is the host's kind of conv.
    """
    groups = geometry.groups
    return F.conv2d(conv2d(F.conv2d(x, v, groups=groups), m, geometry), u, groups=groups)


def conv_expand_delta_weight(v: torch.Tensor, m: torch.Tensor, u: torch.Tensor, groups: int) -> torch.Tensor:
    """The same delta contracted to one [out, in/g, kh, kw] kernel, in fp32."""
    um = _grouped_product(u, m, groups)  # [out, p/g, kh, kw]
    out, inner, kh, kw = um.shape
    per_group = um.reshape(groups, out // groups, inner, kh * kw)
    kernel = torch.einsum("gopk,gpi->goik", per_group, v.float().reshape(groups, inner, -1))
    return kernel.reshape(out, -1, kh, kw)


def centre_taps(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """What the host's centre kernel tap reads at each of its output positions, [N, C, H_out, W_out].

    The input is padded as the host pads it and sampled from the centre tap's offset with the host's
    stride, so a 1×1 kernel on these taps is that kernel at the centre of the host's k×k window: the
    same function as the host's conv with the kernel embedded at the centre, for any stride, padding
    and dilation (an odd kernel has a centre; `narset.contract.rules` refuses an even one).
    """
    pad_h, pad_w = geometry.padding
    mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=mode) if pad_h or pad_w else x
    (kh, kw), (dh, dw), (sh, sw) = geometry.kernel_size, geometry.dilation, geometry.stride
    h_out = (padded.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (padded.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    top, left = dh * (kh // 2), dw * (kw // 2)
    return padded[..., top : top + sh * (h_out - 1) + 1 : sh, left : left + sw * (w_out - 1) + 1 : sw]


def batch_norm_affine(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as `scale · z + shift` per channel, from its running statistics, in fp32."""
    scale = weight.float() / torch.sqrt(var.float() + eps)
    return scale, bias.float() - mean.float() * scale


def _identity_1x1(channels: int, groups: int, device: torch.device) -> torch.Tensor:
    """The grouped 1×1 kernel [C, C/g, 1, 1] that maps every channel to itself."""
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, 1, 1, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index % per_group, 0, 0] = 1.0
    return kernel


def conv_branch_delta_weight(
    geometry: ConvGeometry, branches: Sequence[tuple[torch.Tensor | None, torch.Tensor]]
) -> torch.Tensor:
    """The branches' eval-mode map as one [out, in/g, kh, kw] kernel, in fp32 (RepVGG's fusion).

    Each branch is `(kernel_1x1, scale)`: a grouped 1×1 kernel (None: the identity) on the centre taps,
    then a per-channel scale. Their sum sits at the centre of the host's kernel, zeros elsewhere.
    """
    kh, kw = geometry.kernel_size
    out, per_group = geometry.out_channels, geometry.in_channels // geometry.groups
    device = branches[0][1].device
    centre = torch.zeros(out, per_group, 1, 1, device=device)
    for kernel, scale in branches:
        one = _identity_1x1(out, geometry.groups, device) if kernel is None else kernel.float()
        centre = centre + one * scale.float().reshape(-1, 1, 1, 1)
    return F.pad(centre, (kw // 2, kw // 2, kh // 2, kh // 2))


def conv_branch_delta_bias(shifts: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The branches' eval-mode constant per channel (their BatchNorm shifts), in fp32; None without BatchNorm."""
    if not shifts:
        return None
    return torch.stack([shift.float() for shift in shifts]).sum(dim=0)
