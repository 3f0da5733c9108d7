"""What a job tells Narset when it attaches: ranks, host module tree, regions, capabilities, and the
state it resumed from (for Narset to reconcile its ledger against)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from importlib.metadata import version

import torch
from torch import nn

from kasmina_worker.parallel.distributed import rank_info
from kasmina_worker.seeds.blueprints import blueprint_names, get_blueprint
from kasmina_worker.seeds.hosts import module_info, parameter_ties
from kasmina_worker.seeds.scaffold import Scaffold
from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.contract.rules import PROTOCOL_VERSION
from narset.v1 import job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["attach_request", "host_modules"]


def host_modules(root: nn.Module) -> list[job_pb2.ModuleInfo]:
    """The host's module tree under its own names: a scaffold stands for the host module it wraps."""
    ties = parameter_ties(root)
    infos: list[job_pb2.ModuleInfo] = []
    inside_scaffold: list[str] = []
    for name, module in root.named_modules():
        if not name or any(name.startswith(prefix) for prefix in inside_scaffold):
            continue
        if isinstance(module, Scaffold):
            infos.append(module_info(name, module.host, ties))
            inside_scaffold.append(name + ".")
        else:
            infos.append(module_info(name, module, ties))
    return infos


def _ranks() -> tuple[int, list[job_pb2.RankInfo]]:
    """World size and this process's rank (rank 0 attaches for the job)."""
    info = rank_info()
    world, rank = info.world_size, info.rank
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return world, [job_pb2.RankInfo(rank=rank, hostname=socket.gethostname(), pid=os.getpid(), device=device)]


def attach_request(
    *,
    job: str,
    root: nn.Module,
    regions: Sequence[job_pb2.Region],
    wrapper: str,
    boundary: int,
    applied: Iterable[str],
    scaffolds: Iterable[telemetry_pb2.ScaffoldReport],
) -> worker_service_pb2.AttachRequest:
    world, ranks = _ranks()
    builtin = {b.name for b in BUILTIN_BLUEPRINTS}
    own = [get_blueprint(name).proto for name in blueprint_names() if name not in builtin]
    return worker_service_pb2.AttachRequest(
        blueprints=own,
        job_id=job,
        world_size=world,
        ranks=ranks,
        modules=host_modules(root),
        regions=list(regions),
        capabilities=job_pb2.WorkerCapabilities(
            protocol_version=PROTOCOL_VERSION,
            blueprints=blueprint_names(),
            wrapper=wrapper,
            kasmina_version=version("narset-kasmina"),
        ),
        restored=worker_service_pb2.RestoredState(
            boundary=boundary, applied_command_ids=list(applied), scaffolds=scaffolds
        ),
    )
