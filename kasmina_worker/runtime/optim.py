"""Seed parameters in the user's optimiser: one named parameter group per scaffold.

The group joins at deploy (fresh state) with the hyperparameters of the group that holds its
host's parameters (its reference group), every rate times the seed's scale (docs/design.md, section
4), so a seed trains at the rate the user chose for that part of the model; `rates.SeedRates` keeps
it there as a scheduler moves the reference group's rate. It leaves at exit with its
state, which the caller keeps when the exit may be rolled back. A router fold moves the appended
expert into the host router's group and grows the router's state by the seed row's state.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "GROUP_KEY",
    "add_seed_group",
    "drop_params",
    "group_index",
    "move_params_to_group",
    "reference_group",
    "remove_seed_group",
    "replace_param",
    "seed_group_options",
    "seed_group_order",
]

GROUP_KEY = "kasmina_scaffold"
# Group keys holding a rate, scaled for a seed group: the optimiser's `lr`, the `initial_lr` every
# scheduler sets, OneCycleLR's `max_lr` and `min_lr`. Momentum keys a scheduler keeps in the group
# (OneCycleLR, CyclicLR) are copied as they are, so the scheduler finds them on the seed group too.
RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
SCHEDULER_KEYS = ("max_momentum", "base_momentum")


def group_index(optimizer: torch.optim.Optimizer, scaffold_id: str) -> int | None:
    """Index of the scaffold's parameter group, or None."""
    for index, group in enumerate(optimizer.param_groups):
        if group.get(GROUP_KEY) == scaffold_id:
            return index
    return None


def seed_group_order(optimizer: torch.optim.Optimizer) -> list[str]:
    """Scaffold ids of the seed groups in optimiser order."""
    return [group[GROUP_KEY] for group in optimizer.param_groups if GROUP_KEY in group]


def reference_group(optimizer: torch.optim.Optimizer, host: nn.Module) -> int:
    """Index of the group holding the host's first parameter that has one; the first group when none
    has (a host the user keeps out of the optimiser)."""
    return next((index for param in host.parameters() if (index := _index_of(optimizer, param)) is not None), 0)


def seed_group_options(optimizer: torch.optim.Optimizer, reference: dict, scale: float) -> dict:
    """A seed group's hyperparameters: those the optimiser declares (its defaults' keys: lr, weight
    decay, betas, ...) and those a scheduler keeps in the group, as set on `reference`, each rate
    times `scale`."""
    keys = dict.fromkeys([*optimizer.defaults, *RATE_KEYS, *SCHEDULER_KEYS])
    options = {key: reference[key] for key in keys if key in reference}
    for key in RATE_KEYS:
        if key in options:
            options[key] = options[key] * scale
    return options


def add_seed_group(
    optimizer: torch.optim.Optimizer,
    scaffold_id: str,
    seed: nn.Module,
    options: dict,
    state: dict[str, dict] | None = None,
) -> None:
    """Add the seed's parameters as the group `kasmina/<scaffold_id>` with the hyperparameters
    `options`, and `state` by param name."""
    named = list(seed.named_parameters())
    optimizer.add_param_group(
        {"params": [p for _, p in named], **options, "name": f"kasmina/{scaffold_id}", GROUP_KEY: scaffold_id}
    )
    for name, param in named:
        if state and name in state:
            optimizer.state[param] = {k: _to_param_device(v, param) for k, v in state[name].items()}


def remove_seed_group(optimizer: torch.optim.Optimizer, scaffold_id: str, seed: nn.Module) -> dict[str, dict]:
    """Remove the scaffold's group and its state; returns the state by seed parameter name."""
    index = group_index(optimizer, scaffold_id)
    if index is None:
        return {}
    del optimizer.param_groups[index]
    removed: dict[str, dict] = {}
    for name, param in seed.named_parameters():
        state = optimizer.state.pop(param, None)
        if state:
            removed[name] = state
    return removed


def _to_param_device(value, param: torch.Tensor):
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.to(param.device)
    return value


def _index_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> int | None:
    for index, group in enumerate(optimizer.param_groups):
        if any(p is param for p in group["params"]):
            return index
    return None


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict | None:
    index = _index_of(optimizer, param)
    return None if index is None else optimizer.param_groups[index]


def replace_param(
    optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor, extra_state: dict | None, keep_rows: int
) -> None:
    """Swap `old` for `new` in its group. State tensors shaped like `old` are cut to `keep_rows`
    rows and extended by the rows of `extra_state` (or zeros) to `new`'s shape; others are kept."""
    group = _group_of(optimizer, old)
    if group is None:
        return
    group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if not state:
        return
    grown: dict = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == old.shape:
            head = value[:keep_rows]
            rows = new.shape[0] - keep_rows
            if rows > 0:
                tail = extra_state.get(key) if extra_state else None
                tail = tail.to(value) if isinstance(tail, torch.Tensor) else value.new_zeros((rows, *value.shape[1:]))
                head = torch.cat([head, tail.reshape(rows, *value.shape[1:])])
            grown[key] = head.clone()
        else:
            grown[key] = value
    optimizer.state[new] = grown


def move_params_to_group(
    optimizer: torch.optim.Optimizer, anchor: torch.Tensor, params: list[torch.Tensor], state: dict[int, dict]
) -> None:
    """Add `params` to the group holding `anchor`, with `state` by position in `params`."""
    group = _group_of(optimizer, anchor)
    if group is None:
        return
    group["params"] = list(group["params"]) + params
    for index, param in enumerate(params):
        if state.get(index):
            optimizer.state[param] = state[index]


def drop_params(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Remove `params` (and their state) from whatever group holds them."""
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    for param in params:
        optimizer.state.pop(param, None)
