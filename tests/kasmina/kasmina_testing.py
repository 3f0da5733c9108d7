"""Small real models and command builders shared by the Kasmina tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kasmina_worker import Conv1D, KasminaWorker, TopKMoE
from narset.v1 import command_pb2


class MLP(nn.Module):
    """A 2-layer MLP with non-square layers."""

    def __init__(self, d_in: int = 12, hidden: int = 20, d_out: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MLP3(nn.Module):
    """A 3-layer MLP with non-square layers: a scaffold on `fc2` has layers upstream and downstream."""

    def __init__(self, d_in: int = 12, hidden: int = 20, d_out: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden + 4)
        self.fc3 = nn.Linear(hidden + 4, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class GPT2MLP(nn.Module):
    """The GPT-2 MLP block (two transposed-weight Conv1D layers) and a Conv1D head to 6 outputs."""

    def __init__(self, width: int = 12, hidden: int = 20) -> None:
        super().__init__()
        self.c_fc = Conv1D(hidden, width)
        self.c_proj = Conv1D(width, hidden)
        self.c_head = Conv1D(6, width)
        for layer in (self.c_fc, self.c_proj, self.c_head):
            nn.init.normal_(layer.weight, std=0.3)
            nn.init.normal_(layer.bias, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_head(x + self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A small pre-norm transformer block with self-attention and an MLP."""

    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(x.mean(dim=1))


class MoEModel(nn.Module):
    """An input projection, the documented top-k MoE layer, and a head."""

    def __init__(self, width: int = 8, experts: int = 3, top_k: int = 2) -> None:
        super().__init__()
        self.proj = nn.Linear(6, width)
        self.moe = TopKMoE(width, hidden=12, num_experts=experts, top_k=top_k)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.moe(torch.tanh(self.proj(x))))


IMAGE = (8, 3, 10, 10)  # a batch of 8 three-channel 10×10 images for ConvNet


class ConvNet(nn.Module):
    """A 3×3 stem, the Conv2d host `conv` (geometry as given) and a pooled linear head to 6 outputs."""

    def __init__(self, channels: int = 8, out_channels: int | None = None, kernel_size=3, **conv) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, out_channels, kernel_size, **conv)
        self.head = nn.Linear(out_channels, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.conv(F.gelu(self.stem(x)))).mean(dim=(2, 3)))


def deploy(module: str, blueprint: str, command_id: str = "", **fields) -> command_pb2.AdaptationCommand:
    """A deploy command; `fields` go to the DeployAction (policy, blueprint_params, ...)."""
    return command_pb2.AdaptationCommand(
        command_id=command_id, deploy=command_pb2.DeployAction(module=module, blueprint=blueprint, **fields)
    )


def on(action: str, command_id: str = "", scaffold_id: str = "", module: str = "", **fields):
    """A fold / prune / persist / rollback / pause / resume command naming a scaffold."""
    ref = command_pb2.ScaffoldRef(scaffold_id=scaffold_id) if scaffold_id else command_pb2.ScaffoldRef(module=module)
    body = getattr(command_pb2, f"{action.capitalize()}Action")(scaffold=ref, **fields)
    return command_pb2.AdaptationCommand(command_id=command_id, **{action: body})


def schedule(**fields) -> command_pb2.ScaffoldPolicy:
    """A policy override setting every phase length (0 unless given) and a TTL covering them."""
    phases = ("isolated_ckpts", "warmup_ckpts", "hold_ckpts", "decay_ckpts")
    alpha = command_pb2.AlphaSchedule(**({k: 0 for k in phases} | fields))
    ttl = sum(fields.get(k, 0) for k in phases)
    return command_pb2.ScaffoldPolicy(schedule=alpha, ttl_ckpts=max(ttl, 1))


def batch(step: int, shape: tuple[int, ...], d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic batch for `step` (independent of the global RNG)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(*shape, generator=g), torch.randn(shape[0], d_out, generator=g)


def train(
    worker: KasminaWorker,
    optimizer: torch.optim.Optimizer,
    steps: int,
    start: int = 0,
    d_in: int = 12,
    d_out: int = 6,
    seq: int | None = None,
    shape: tuple[int, ...] | None = None,
) -> list[float]:
    """Real training steps through `worker.model` on inputs of `shape` (default [8, seq, d_in] or [8, d_in]);
    returns the losses."""
    losses = []
    dtype = next(worker.model.parameters()).dtype
    shape = shape or ((8, seq, d_in) if seq else (8, d_in))
    for step in range(start, start + steps):
        x, y = (t.to(dtype) for t in batch(step, shape, d_out))
        loss = worker.step_loss(F.mse_loss(worker.model(x), y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return [float(v) for v in losses]


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the largest error relative to the output's scale."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def result_ok(summary, index: int = 0) -> None:
    """Assert the `index`-th command result of a boundary summary was applied."""
    from narset.v1 import telemetry_pb2

    result = summary.results[index]
    assert result.outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED, result.message
