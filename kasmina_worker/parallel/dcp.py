"""Save and resume a scaffolded job with `torch.distributed.checkpoint` (DCP).

Order matters on resume: the worker's manifest is restored first, so that the module tree (live
scaffolds, router-fold growth) and the optimiser's seed groups exist, and the model is re-wrapped
(re-sharded under FSDP2); only then does DCP load the model and optimiser state into that
structure, each rank reading its own shards.

Layout of a checkpoint directory: DCP's files for `{"model": ..., "optim": ...}` (sharded for
FSDP2, parameter names without wrapper prefixes, via `get_state_dict`), plus
`kasmina_worker.pt`, the worker's manifest (written by rank 0; every rank reads it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from kasmina_worker.parallel.distributed import rank_info

if TYPE_CHECKING:  # the worker calls into this package; only its type is needed here
    from kasmina_worker.worker import KasminaWorker

__all__ = ["MANIFEST", "load", "save"]

log = structlog.get_logger("kasmina")

MANIFEST = "kasmina_worker.pt"


def save(path: str | Path, worker: KasminaWorker, optimizer: torch.optim.Optimizer) -> None:
    """Save model, optimiser and worker state at a boundary (call right after `checkpoint`)."""
    path = Path(path)
    model_sd, optim_sd = get_state_dict(worker._root, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    if rank_info().rank == 0:
        torch.save(worker.state_dict(), path / MANIFEST)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    log.info("dcp_saved", job=worker.job, boundary=worker.boundary, path=str(path))


def load(path: str | Path, worker: KasminaWorker, optimizer: torch.optim.Optimizer) -> None:
    """Resume a fresh worker (same model, optimiser and `wrap` as at the start) from `path`."""
    path = Path(path)
    worker.load_state_dict(torch.load(path / MANIFEST, weights_only=True))
    model_sd, optim_sd = get_state_dict(worker._root, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(worker._root, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    log.info("dcp_loaded", job=worker.job, boundary=worker.boundary, path=str(path))
