"""Save and resume a scaffolded job with `torch.distributed.checkpoint` (DCP).

Order matters on resume: the worker's manifest is restored first, so that the module tree (live
scaffolds, router-fold growth) and the optimiser's seed groups exist, and the model is re-wrapped
(re-sharded under FSDP2); only then does DCP load the model and optimiser state into that
structure, each rank reading its own shards.

Layout of a checkpoint directory: DCP's files for `{"model": ..., "optim": ...}` (sharded for
FSDP2; the model's entries are the user model's own `state_dict`, the hosts' tensors under their
original names, loaded in place; the optimiser's via `get_optimizer_state_dict`, keyed by parameter
name), plus `kasmina_worker.pt`, the worker's manifest with the live seeds' full tensors (gathered
on every rank, written by rank 0; every rank reads it).

The model's entries bypass `get_state_dict`: it maps state keys to modules by attribute path, and
a live scaffold's host entries (`fc1.weight`) are not attributes of the scaffold (`fc1.host.weight`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from kasmina_worker.parallel.distributed import rank_info

if TYPE_CHECKING:  # the worker calls into this package; only its type is needed here
    from kasmina_worker.worker import KasminaWorker

__all__ = ["MANIFEST", "load", "save"]

log = structlog.get_logger("kasmina")

MANIFEST = "kasmina_worker.pt"


def save(path: str | Path, worker: KasminaWorker, optimizer: torch.optim.Optimizer) -> None:
    """Save model, optimiser and worker state at a boundary (call right after `checkpoint`)."""
    path = Path(path)
    optim_sd = get_optimizer_state_dict(worker._root, optimizer)
    dcp.save({"model": worker._root.state_dict(), "optim": optim_sd}, checkpoint_id=str(path))
    manifest = worker.state_dict()  # on every rank: the seeds' sharded tensors are gathered into it
    if rank_info().rank == 0:
        torch.save(manifest, path / MANIFEST)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    log.info("dcp_saved", job=worker.job, boundary=worker.boundary, path=str(path))


def load(path: str | Path, worker: KasminaWorker, optimizer: torch.optim.Optimizer) -> None:
    """Resume a fresh worker (same model, optimiser and `wrap` as at the start) from `path`."""
    path = Path(path)
    worker.load_state_dict(torch.load(path / MANIFEST, weights_only=True))
    state = {"model": worker._root.state_dict(), "optim": get_optimizer_state_dict(worker._root, optimizer)}
    dcp.load(state, checkpoint_id=str(path))  # the model's tensors share the parameters' storage: loaded in place
    set_optimizer_state_dict(worker._root, optimizer, optim_state_dict=state["optim"])
    log.info("dcp_loaded", job=worker.job, boundary=worker.boundary, path=str(path))
