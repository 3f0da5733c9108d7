"""One leader, identical followers: the worker's collectives at a checkpoint boundary.

Every rank calls `checkpoint` at the same boundary (docs/design.md, section 3). Here:

* `broadcast_commands`: rank 0 alone exchanges with the command sources; its commands travel to
  every rank as serialized protobuf bytes, so all ranks apply the same commands in the same order.
* `reduce_trips`: the on-device breaker records are OR-ed (kind bits) and MIN-ed (first step)
  across ranks before the boundary prunes anything; a loss spike seen on one rank's micro-batch
  must prune the scaffold on every rank, or the module trees would diverge.
* `reduce_measures`: probe measurements run on all ranks in lockstep and are gathered, so rank 0
  reports the global probe loss and gate telemetry.
* `broadcast_seed_buffers`: the live seeds' buffers (a conv_branch's BatchNorm running statistics)
  become rank 0's before anything reads them at the boundary, so gates and folds agree on every rank.
* `check_agreement`: every rank's module-tree digest and applied-command digest are gathered and
  compared; a disagreement raises `RankDisagreement` naming the ranks and the first differences,
  on every rank at once (never a hang, never silent divergence).

With no process group (or a world of 1) every function is the identity and costs nothing.
"""

from __future__ import annotations

import gc
import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
import torch
import torch.distributed as dist
from torch import nn

from kasmina_worker.measure.breakers import Trip
from narset.v1 import command_pb2, telemetry_pb2

__all__ = [
    "DistributedConfig",
    "RankDisagreement",
    "RankInfo",
    "broadcast_commands",
    "broadcast_seed_buffers",
    "check_agreement",
    "rank_info",
    "reduce_measures",
    "reduce_trips",
    "release_process_group",
    "tree_entries",
]

log = structlog.get_logger("kasmina")

LEADER = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class DistributedConfig:
    """How the worker coordinates the ranks of a distributed job."""

    group: dist.ProcessGroup | None = None
    """Process group of the data-parallel ranks; None is the default (world) group."""
    check_agreement: bool = True
    """Compare every rank's module tree and applied command ids at each boundary (one small gather)."""
    check_values: bool = False
    """Also hash every parameter's values (a device-to-host copy of the model; for debugging)."""

    def __post_init__(self) -> None:
        if self.check_values and not self.check_agreement:
            raise ValueError("check_values=True needs check_agreement=True, got check_agreement=False")


@dataclass(frozen=True, slots=True)
class RankInfo:
    """This process's place in the job: rank, world size and the group the collectives use."""

    rank: int
    world_size: int
    group: dist.ProcessGroup | None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == LEADER


class RankDisagreement(RuntimeError):
    """Ranks reached a boundary with different module trees or applied commands."""

    def __init__(self, what: str, ranks: Sequence[int], detail: str) -> None:
        super().__init__(f"ranks {list(ranks)} disagree with rank {LEADER} on the {what}: {detail}")
        self.what = what
        self.ranks = tuple(ranks)


def rank_info(group: dist.ProcessGroup | None = None) -> RankInfo:
    """The rank and world size in `group`; (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return RankInfo(0, 1, None)
    return RankInfo(dist.get_rank(group), dist.get_world_size(group), group)


def _device(info: RankInfo) -> torch.device:
    """Where collective tensors live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(info.group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_leader(info: RankInfo) -> int:
    return dist.get_global_rank(info.group, LEADER) if info.group is not None else LEADER


def broadcast_commands(
    commands: Sequence[command_pb2.AdaptationCommand], info: RankInfo
) -> list[command_pb2.AdaptationCommand]:
    """Rank 0's commands on every rank, in rank 0's order (others' `commands` are ignored)."""
    if not info.distributed:
        return list(commands)
    payload: list = [[c.SerializeToString() for c in commands]] if info.leader else [None]
    dist.broadcast_object_list(payload, src=_global_leader(info), group=info.group, device=_device(info))
    return [command_pb2.AdaptationCommand.FromString(raw) for raw in payload[0]]


def broadcast_seed_buffers(seeds: Sequence[nn.Module], info: RankInfo) -> None:
    """Give every rank rank 0's buffers of `seeds` (the same seeds, in the same order, on every rank).

    A BatchNorm updates its running statistics from each rank's own micro-batches. DDP overwrites
    them with rank 0's at every forward (`broadcast_buffers`), FSDP2 never does; a fold writes them
    into the host, so without this the ranks would fold different kernels. Rank 0's, as under DDP.
    """
    if not info.distributed:
        return
    for seed in seeds:
        for buffer in seed.buffers():
            dist.broadcast(buffer, src=_global_leader(info), group=info.group)


def reduce_trips(trips: Sequence[Trip], info: RankInfo) -> list[Trip]:
    """Every trip's kind bits OR-ed and its first step MIN-ed over the ranks (one all-reduce)."""
    if not info.distributed or not trips:
        return list(trips)
    never = torch.iinfo(torch.int64).max
    # OR of small bit sets as a MAX per bit (MAX is the only order-free reduction all backends have),
    # and MIN of the first step as a MAX of its negation; one int64 tensor, one collective.
    rows = [[trip.kind & 1, trip.kind >> 1 & 1, -(trip.first if trip.first >= 0 else never)] for trip in trips]
    packed = torch.tensor(rows, dtype=torch.int64, device=_device(info))
    dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=info.group)
    return [
        Trip(non_finite | spike << 1, -1 if -negated_first == never else -negated_first)
        for non_finite, spike, negated_first in packed.tolist()
    ]


def tree_entries(root: nn.Module, with_values: bool = False) -> list[str]:
    """One line per module, parameter and buffer: name, type or global shape, dtype, requires_grad."""
    entries = [f"module {name or '<root>'} {type(m).__name__}" for name, m in root.named_modules()]
    for name, param in root.named_parameters():
        line = f"param {name} {tuple(param.shape)} {param.dtype} grad={param.requires_grad}"
        if with_values:
            line += f" sha={_value_hash(param)}"
        entries.append(line)
    entries.extend(f"buffer {name} {tuple(b.shape)} {b.dtype}" for name, b in root.named_buffers())
    return entries


def _value_hash(tensor: torch.Tensor) -> str:
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    data = full.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_agreement(
    root: nn.Module, applied: Sequence[str], boundary: int, info: RankInfo, config: DistributedConfig
) -> None:
    """Raise `RankDisagreement` on every rank when any rank's tree or applied commands differ."""
    if not info.distributed or not config.check_agreement:
        return
    tree = tree_entries(root, with_values=config.check_values)
    mine = (boundary, _digest(tree), _digest(list(applied)))
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, mine, group=info.group)
    for index, (what, lines) in enumerate((("boundary", None), ("module tree", tree), ("applied commands", applied))):
        odd = [rank for rank, entry in enumerate(gathered) if entry[index] != gathered[LEADER][index]]
        if not odd:
            continue
        # Every rank saw the same gathered digests, so every rank takes this branch: the detail
        # gather below is collective-safe.
        detail = _first_differences(what, lines, odd, gathered, info)
        log.error("rank_disagreement", what=what, ranks=odd, boundary=boundary, detail=detail)
        raise RankDisagreement(what, odd, detail)


def _first_differences(what: str, lines: Sequence[str] | None, odd: list[int], gathered: list, info: RankInfo) -> str:
    if lines is None:
        return ", ".join(f"rank {r} at boundary {gathered[r][0]}" for r in [LEADER, *odd])
    everyone: list = [None] * info.world_size
    dist.all_gather_object(everyone, list(lines), group=info.group)
    leader, leader_set = everyone[LEADER], set(everyone[LEADER])
    parts = []
    for rank in odd:
        theirs = set(everyone[rank])
        extra = [x for x in everyone[rank] if x not in leader_set][:3]
        missing = [x for x in leader if x not in theirs][:3]
        parts.append(f"rank {rank} has {extra or 'nothing more'}, lacks {missing or 'nothing'}")
    return "; ".join(parts)


# Gate fields where the worst rank, not the mean, is the envelope (G5: the slowest step, the
# fullest device); every other optional double is averaged, every bool OR-ed.
_WORST_OF = frozenset({"step_time_ratio", "memory_fraction"})


def reduce_measures(probe: float | None, gates: dict[str, telemetry_pb2.GateTelemetry], info: RankInfo) -> float | None:
    """Probe loss and gate telemetry reduced over the ranks (in place for `gates`); returns the probe.

    One `all_gather_object` of the serialized telemetry, so a field measured on some ranks only
    (an optional field left unset) cannot mismatch a collective: it is averaged over the ranks
    that have it. Every rank gets the same reduced values.
    """
    if not info.distributed:
        return probe
    mine = (probe, {sid: t.SerializeToString() for sid, t in gates.items()})
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, mine, group=info.group)
    probes = [p for p, _ in gathered if p is not None]
    for sid, telemetry in gates.items():
        theirs = [telemetry_pb2.GateTelemetry.FromString(g[sid]) for _, g in gathered if sid in g]
        for fd in telemetry.DESCRIPTOR.fields:
            if fd.type == fd.TYPE_BOOL:
                setattr(telemetry, fd.name, any(getattr(t, fd.name) for t in theirs))
                continue
            values = [getattr(t, fd.name) for t in theirs if t.HasField(fd.name)]
            if values:
                setattr(telemetry, fd.name, max(values) if fd.name in _WORST_OF else sum(values) / len(values))
    return sum(probes) / len(probes) if probes else None


def release_process_group() -> bool:
    """Destroy the default process group and free it; True when nothing holds it any more.

    Call it at the end of a job, once the model, optimiser and worker are gone. Only freeing a gloo
    group joins its worker threads, and one still running at interpreter exit aborts the process
    ("terminate called without an active exception") when it drops a finished collective's tensors.
    DDP holds the group from reference cycles (hence the collection), FSDP2's device mesh from
    DTensor's caches (private to torch, hence cleared by name). Import `torch.distributed.nn` before
    `init_process_group`: imported later (dynamo does), its `group=group.WORLD` defaults hold it.
    """
    from torch.distributed.tensor import debug
    from torch.distributed.tensor._collective_utils import MeshTopoInfo
    from torch.distributed.tensor._redistribute import _gen_transform_infos, clear_redistribute_planner_cache

    group = weakref.ref(dist.group.WORLD)
    debug._clear_sharding_prop_cache()
    clear_redistribute_planner_cache()
    _gen_transform_infos.cache_clear()
    MeshTopoInfo.build_from_mesh.cache_clear()
    gc.collect()
    dist.destroy_process_group()
    return group() is None
