"""Pure delta functions of the delta seeds, shared by the forward, the fold and the gates.

Each delta seed is a linear map of its input. `*_delta` computes it on activations (the forward);
`*_delta_weight` gives the same map as a dense [out, in] weight (the fold and the gates). The
LoRA forward uses the factors (cheaper); both functions use the same factors and scaling, and the
fold tests pin their agreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dense_delta", "dense_delta_weight", "lora_delta", "lora_delta_weight"]


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
