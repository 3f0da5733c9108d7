"""Shared by the distributed tests and the torchrun scripts they launch.

Each scenario is one `torchrun --nproc_per_node=2` launch (gloo, CPU): the script asserts as it
goes and rank 0 writes its measurements to a JSON file that the pytest test reads and checks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before init_process_group; see release_process_group)
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kasmina"))
from kasmina_testing import MLP, deploy, max_rel_err, on, schedule  # noqa: E402

from kasmina_worker.parallel import distributed  # noqa: E402

__all__ = [
    "MLP",
    "all_ranks_equal",
    "batch",
    "deploy",
    "digest",
    "eval_outputs",
    "full",
    "max_rel_err",
    "module_tensors",
    "on",
    "release_process_group",
    "run_torchrun",
    "schedule",
    "write_result",
]

HERE = Path(__file__).resolve().parent
TORCHRUN = Path(sys.executable).with_name("torchrun")


def run_torchrun(script: str, out: Path, *args: str, nproc: int = 2, timeout: float = 240.0) -> dict:
    """Launch `script` under torchrun with `--out out`; returns the JSON rank 0 wrote."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", str(HERE / script), "--out", str(out)]
    with subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as job:
        try:
            stdout, stderr = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_torchrun(job)
            raise
    assert job.returncode == 0, f"{script} failed ({job.returncode}):\n{stdout[-4000:]}\n{stderr[-8000:]}"
    return json.loads(out.read_text())


def _stop_torchrun(job: subprocess.Popen) -> None:
    """End a torchrun and its ranks: SIGTERM, which torchrun passes on to the ranks it started (each in a session
    of its own, so a SIGKILL of torchrun alone leaves them running), then SIGKILL if it does not end."""
    job.terminate()
    try:
        job.wait(timeout=30)
    except subprocess.TimeoutExpired:
        job.kill()
        job.wait()


def batch(step: int, rank: int, rows: int = 4, d_in: int = 12, d_out: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s deterministic micro-batch of `step` (independent of the global RNG)."""
    g = torch.Generator().manual_seed(10_000 * (rank + 1) + step)
    return torch.randn(rows, d_in, generator=g), torch.randn(rows, d_out, generator=g)


def module_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name in the module tree: live seeds and alpha included, which
    `state_dict()` leaves to the worker's state."""
    return dict(itertools.chain(model.named_parameters(), model.named_buffers()))


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor's gathered (a collective), any other as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of the named tensors' full values, names included; a collective for DTensors."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(full(t).detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def eval_outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs on `x` in eval mode, then back to train mode."""
    model.eval()
    y = model(x)
    model.train()
    return y


def all_ranks_equal(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that are not bit-identical on every rank (empty when all agree)."""
    flat = torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors.values()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if all(torch.equal(g, gathered[0]) for g in gathered):
        return []
    bad, offset = [], 0
    for name, t in tensors.items():
        n = t.numel()
        if not all(torch.equal(g[offset : offset + n], gathered[0][offset : offset + n]) for g in gathered):
            bad.append(name)
        offset += n
    return bad


def write_result(path: str, result: dict) -> None:
    """Rank 0 writes `result` as JSON; every rank waits for it."""
    if dist.get_rank() == 0:
        Path(path).write_text(json.dumps(result, indent=1))
    dist.barrier()


def release_process_group() -> None:
    """Destroy and free the default process group after `main()` returned; raise if something still holds it."""
    if not distributed.release_process_group():
        raise RuntimeError("the default process group outlived destroy_process_group: something still holds it")
