"""The pure gate formulas (docs/kasmina.md, "Gates"): step-loss stability, feature diversity,
SVD energy, memory fraction. No state, no model; `kasmina_worker.measure.gate_meter` applies them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from narset.v1 import telemetry_pb2

__all__ = [
    "diversity_index",
    "drift",
    "finite",
    "jitter_p95",
    "loss_noise",
    "memory_fraction",
    "put",
    "relative_change",
    "svd_energy",
]

JITTER_EPS = 1e-6


def finite(value: float | None) -> float | None:
    """`value` when it is a finite number, else None (unmeasured)."""
    return value if value is not None and math.isfinite(value) else None


def put(gates: telemetry_pb2.GateTelemetry, name: str, value: float | None) -> None:
    """Set a gate field only when measured and finite (unset means unmeasured)."""
    value = finite(value)
    if value is not None:
        setattr(gates, name, float(value))


def _p95_of_changes(losses: torch.Tensor, relative: bool) -> float | None:
    values = losses.detach().double().cpu()
    if values.numel() < 2:
        return None
    changes = (values[1:] - values[:-1]).abs()
    if relative:
        changes = changes / (values[:-1].abs() + JITTER_EPS)
    return finite(float(torch.quantile(changes, 0.95)))


def jitter_p95(losses: torch.Tensor) -> float | None:
    """p95 of `|L_t − L_{t−1}| / (|L_{t−1}| + 1e-6)` (linear interpolation); None with < 2 losses."""
    return _p95_of_changes(losses, relative=True)


def loss_noise(losses: torch.Tensor) -> float | None:
    """p95 of `|L_t − L_{t−1}|` (linear interpolation), the job's own step noise; None with < 2 losses."""
    return _p95_of_changes(losses, relative=False)


def drift(losses: torch.Tensor, k: int) -> float | None:
    """`|mean(last k) − mean(the k before)|`; None with fewer than 2k losses (or k < 1)."""
    values = losses.detach().double().cpu()
    if k < 1 or values.numel() < 2 * k:
        return None
    return finite(float((values[-k:].mean() - values[-2 * k : -k].mean()).abs()))


def _evenly(n: int, keep: int) -> torch.Tensor | None:
    return None if n <= keep else torch.linspace(0, n - 1, keep).round().long()


def diversity_index(outputs: Sequence[torch.Tensor], max_features: int = 512, max_samples: int = 8192) -> float | None:
    """`1 − mean_{i≠j} |corr(f_i, f_j)|` over the last-dimension features of `outputs`.

    Rows are every leading position of every tensor. A feature whose std is ≤ 1e-6 of the largest
    counts as fully correlated with every other (dead); all features constant gives 0, one feature
    gives 1 unless it is constant. None with fewer than 2 rows.
    """
    if not outputs:
        return None
    y = torch.cat([o.detach().reshape(-1, o.shape[-1]) for o in outputs]).float()
    rows = _evenly(y.shape[0], max_samples)
    cols = _evenly(y.shape[1], max_features)
    y = y if rows is None else y[rows.to(y.device)]
    y = y if cols is None else y[:, cols.to(y.device)]
    n, d = y.shape
    if n < 2:
        return None
    y = y - y.mean(dim=0)
    std = y.pow(2).mean(dim=0).sqrt()
    top = float(std.max())
    if not math.isfinite(top):
        return None
    if top == 0.0:
        return 0.0
    dead = std <= 1e-6 * top
    if d == 1:
        return 0.0 if bool(dead[0]) else 1.0
    z = y / torch.where(dead, torch.ones_like(std), std)
    corr = (z.T @ z / n).abs().clamp_max(1.0)
    corr[dead, :] = 1.0
    corr[:, dead] = 1.0
    off_diagonal = corr.sum() - corr.diagonal().sum()
    return finite(1.0 - float(off_diagonal) / (d * (d - 1)))


def svd_energy(delta_weight: torch.Tensor, rank: int) -> float:
    """Fraction of `Σ σ_i²` of the delta matrix kept by its top `rank` singular values (1 for a zero delta)."""
    energies = torch.linalg.svdvals(delta_weight.detach().float()).double().pow(2)
    total = float(energies.sum())
    return 1.0 if total == 0.0 else float(energies[:rank].sum()) / total


def _read_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit_bytes() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def memory_fraction(device: torch.device) -> float | None:
    """CUDA: allocated / total device memory. CPU: process RSS / min(RAM, cgroup limit), from /proc."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return torch.cuda.memory_allocated(device) / total if total else None
    rss_kib = _read_kib("/proc/self/status", "VmRSS:")
    total_kib = _read_kib("/proc/meminfo", "MemTotal:")
    if rss_kib is None or not total_kib:
        return None
    total = total_kib * 1024
    limit = _cgroup_limit_bytes()
    if limit is not None and 0 < limit < total:
        total = limit
    return rss_kib * 1024 / total


def relative_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """`‖after - before‖ / ‖before‖` over all site outputs (G3's foldability is 1 minus this)."""
    diff = torch.sqrt(sum(((a.float() - b.float()) ** 2).sum() for a, b in zip(after, before, strict=True)))
    norm = torch.sqrt(sum((b.float() ** 2).sum() for b in before))
    return float(diff / norm.clamp_min(1e-30))
