"""The LoRA fold is PEFT's merge: the same A, B and scaling give the same merged weight (docs/kasmina.md, "PEFT")."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from kasmina_worker.seeds.blueprints.builtin import LoraSeed
from kasmina_worker.seeds.fold import fold_delta

IN, OUT, RANK = 12, 20, 4


class Net(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _host(kind: str) -> nn.Module:
    """A non-square layer with non-trivial weights (not a fresh init): nn.Linear or GPT-2's Conv1D ([in, out])."""
    torch.manual_seed(1)
    layer = nn.Linear(IN, OUT) if kind == "linear" else Conv1D(OUT, IN)
    nn.init.normal_(layer.weight, std=0.5)
    nn.init.normal_(layer.bias, std=0.1)
    return layer


def _peft_merge(host: nn.Module, a: torch.Tensor, b: torch.Tensor, lora_alpha: float) -> torch.Tensor:
    """PEFT's merge_and_unload of a LoRA with these A [r, in], B [out, r] and `lora_alpha` (scaling lora_alpha / r)."""
    config = LoraConfig(
        r=RANK,
        lora_alpha=lora_alpha,
        target_modules=["layer"],
        lora_dropout=0.0,
        init_lora_weights=False,
        fan_in_fan_out=isinstance(host, Conv1D),
    )
    model = get_peft_model(Net(copy.deepcopy(host)), config)
    layer = model.base_model.model.layer
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    return model.merge_and_unload().layer.weight.detach()


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize(("alpha", "scaling", "exact"), [(1.0, 0.75, True), (0.5, 2.0, True), (0.3, 1.5, False)])
def test_lora_fold_equals_peft_merge_and_unload(kind, alpha, scaling, exact):
    """Folding at blend alpha with the blueprint's `scaling` equals PEFT's merge with lora_alpha = alpha·scaling·r:
    bit for bit where alpha·scaling rounds as PEFT's lora_alpha / r does, within 1e-6 relative otherwise."""
    host = _host(kind)
    seed = LoraSeed(IN, OUT, RANK, scaling)
    with torch.no_grad():
        seed.b.normal_(std=0.5)  # a trained B, not the zero of a fresh seed
    merged = _peft_merge(host, seed.a.detach(), seed.b.detach(), lora_alpha=alpha * scaling * RANK)
    folded = copy.deepcopy(host)
    fold_delta("layer", folded, seed, torch.tensor(alpha))
    assert not torch.equal(folded.weight, host.weight)  # the delta is really there
    if exact:
        assert torch.equal(folded.weight, merged)
    else:
        assert float((folded.weight.detach() - merged).abs().max() / merged.abs().max()) <= 1e-6
    assert torch.equal(folded.bias, host.bias)
