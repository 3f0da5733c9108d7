"""Seed groups' learning rates under the user's LR schedulers.

A seed group's rate is its reference group's (the one holding the host's parameters) current rate
times the seed's scale, at every optimiser step. Two parts keep it so:

* an optimiser step pre-hook writes `seed["lr"] = reference["lr"] * scale` for each live seed group
  just before the step uses it: whatever a scheduler computed (its own chainable form, an additive
  `eta_min`, a plateau's `eps`), the step runs at the host's rate times the scale. One float multiply
  per live scaffold, no device sync (a tensor rate stays on its device);
* the schedulers the worker was given keep their per-group lists (`base_lrs`, `_last_lr`, LambdaLR's
  `lr_lambdas`, CyclicLR's `max_lrs` and momenta, ReduceLROnPlateau's `min_lrs`; SequentialLR's and
  ChainedScheduler's children too) one entry per group: a joining group gets a copy of its reference
  group's entries (rates times the scale) and a leaving group's entries go with it. Their
  `state_dict` then round-trips through a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from kasmina_worker.runtime.optim import GROUP_KEY, reference_group

__all__ = ["SeedRates"]

# A scheduler's lists with one entry per parameter group: rates (scaled for a seed group) and shapes (copied).
RATE_LISTS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")
SHAPE_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")


@dataclass(frozen=True, slots=True)
class _Link:
    seed: dict
    reference: dict
    scale: float


def _tree(scheduler: LRScheduler) -> list[LRScheduler]:
    """The scheduler and, for SequentialLR and ChainedScheduler, its children, recursively."""
    children = getattr(scheduler, "_schedulers", [])
    return [scheduler, *(s for child in children for s in _tree(child))]


class SeedRates:
    """Ties each seed group's rate to its reference group's and keeps the schedulers' lists in step."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.schedulers: list[LRScheduler] = []
        self._scales: dict[str, tuple[nn.Module, float]] = {}
        self._links: list[_Link] = []
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            # `optimizer.load_state_dict` replaces the group dicts the links hold.
            optimizer.register_load_state_dict_post_hook(lambda _optimizer: self.relink()),
        ]

    def release(self) -> None:
        """Remove this object's hooks from the optimiser (the worker is closed); safe twice."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def attach(self, scheduler: LRScheduler) -> None:
        """Keep `scheduler`'s per-group lists in step from now on (it must drive this optimiser)."""
        if scheduler.optimizer is not self.optimizer:
            raise ValueError("the scheduler drives another optimizer than the worker's")
        self.schedulers.append(scheduler)

    def joined(self, scaffold_id: str, host: nn.Module, reference: int, scale: float) -> None:
        """The seed group of `scaffold_id` was just appended: extend the lists, link its rate."""
        groups = len(self.optimizer.param_groups)
        for scheduler in self.schedulers:
            for part in _tree(scheduler):
                _extend(part, groups - 1, reference, scale)
        self._scales[scaffold_id] = (host, scale)
        self.relink()

    def left(self, scaffold_id: str, index: int) -> None:
        """The seed group of `scaffold_id` at `index` was just removed: drop its entries and link."""
        groups = len(self.optimizer.param_groups)
        for scheduler in self.schedulers:
            for part in _tree(scheduler):
                for name in (*RATE_LISTS, *SHAPE_LISTS):
                    values = getattr(part, name, None)
                    # Only a list still sized for the groups before the removal holds the group's entry.
                    if isinstance(values, list) and len(values) == groups + 1:
                        del values[index]
        self._scales.pop(scaffold_id, None)
        self.relink()

    def relink(self) -> None:
        """Find each seed group's reference group again (boundaries and optimiser loads only)."""
        links = []
        for group in self.optimizer.param_groups:
            entry = self._scales.get(group.get(GROUP_KEY, ""))
            if entry is not None:
                host, scale = entry
                reference = self.optimizer.param_groups[reference_group(self.optimizer, host)]
                links.append(_Link(group, reference, scale))
        self._links = links

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for link in self._links:
            link.seed["lr"] = link.reference["lr"] * link.scale


def _extend(scheduler: LRScheduler, groups_before: int, reference: int, scale: float) -> None:
    """Append the reference group's entries to each per-group list sized for `groups_before` groups."""
    for name in (*RATE_LISTS, *SHAPE_LISTS):
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and len(values) == groups_before:
            values.append(values[reference] * scale if name in RATE_LISTS else values[reference])
