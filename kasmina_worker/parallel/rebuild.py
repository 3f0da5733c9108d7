"""Rebuild, don't patch, wrapped models: unwrap → surgery → rewrap, the optimiser kept consistent.

DDP registers its gradient hooks (for the parameters that require grad) when it is built; FSDP2
fixes its parameter groups at its first forward; a compiled graph bakes in the module tree and
the `requires_grad` flags. Adding or removing parameters, or flipping `requires_grad`, under a
live wrapper silently breaks gradient averaging or leaves a stale graph. So at a boundary that
changes structure the worker:

1. `unwrap()`: drops the wrapper object; a model sharded in place by `fully_shard` is un-sharded
   in place (every DTensor parameter gathered to a plain full parameter, FSDP's hooks, state and
   class removed), so surgery and folds see ordinary tensors (folds on FSDP2 work on the full
   tensor). Parameter objects change, so the optimiser's state and groups are moved over by
   parameter *name* (DTensor state gathered to full tensors).
2. the runtime applies the surgery (identical on every rank, in the same order);
3. `rewrap()`: calls the user's `wrap(root)` again (DDP, `fully_shard`, `torch.compile`, their
   own), moves the optimiser over by name once more (full state re-sharded like its parameter),
   and, when the old model was compiled, calls `torch._dynamo.reset()` first: the new module
   then compiles exactly once at its next forward, and stale cache entries of the old module
   cannot pile up to dynamo's cache-size limit. (The reset drops every compiled frame of the
   process, the user's own compiled functions included; they recompile once too.)

Boundaries that change nothing rebuild nothing (the worker compares the runtime's
`structure_version`). `rebuilds` counts rewraps.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
import torch
from torch import nn

__all__ = [
    "Rebuilder",
    "carry_optimizer_state",
    "full_state",
    "is_compiled",
    "is_fully_sharded",
    "local_tensors",
    "strip_fully_shard",
]

log = structlog.get_logger("kasmina")


def _fsdp_module_type() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return None
    return FSDPModule


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    return DTensor


def is_fully_sharded(root: nn.Module) -> bool:
    """True when `fully_shard` was applied to `root` or any module under it."""
    fsdp = _fsdp_module_type()
    return fsdp is not None and any(isinstance(m, fsdp) for m in root.modules())


def is_compiled(model: nn.Module) -> bool:
    """True when `model` (or a module in it) is a `torch.compile` wrapper or a compiled module."""
    from torch._dynamo.eval_frame import OptimizedModule

    return any(isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) for m in model.modules())


def strip_fully_shard(root: nn.Module) -> None:
    """Undo `fully_shard` in place on `root` and every module under it (collective: all ranks).

    Each DTensor parameter becomes a plain `nn.Parameter` holding the full tensor (same
    `requires_grad`); FSDP's forward hooks, its module state and its class are removed. Buffers
    are untouched. Relies on FSDP2 internals (`_get_fsdp_state`, the composable-API registry),
    pinned by the tests in `tests/distributed`.
    """
    from torch.distributed import _composable_state
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY

    fsdp, dtensor = _fsdp_module_type(), _dtensor_type()
    managed = [m for m in root.modules() if isinstance(m, fsdp)]
    for module in managed:
        module.reshard()  # the registered parameters are the sharded DTensors again
    replaced: dict[int, nn.Parameter] = {}
    # Same traversal order on every rank (the trees agree), so the all-gathers pair up.
    for module in root.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not isinstance(param, dtensor):
                continue
            if id(param) not in replaced:
                full = param.full_tensor().detach().clone()
                replaced[id(param)] = nn.Parameter(full, requires_grad=param.requires_grad)
            module._parameters[name] = replaced[id(param)]
    for module in managed:
        state = module._get_fsdp_state()
        for handle in (state._pre_forward_hook_handle, state._post_forward_hook_handle):
            handle.remove()
        _composable_state._module_state_mapping.pop(module, None)
        states = module.__dict__.get(STATE_KEY, {})
        for key in [k for k, v in states.items() if v is state]:
            del states[key]
        module.__dict__.get(REGISTRY_KEY, {}).pop("fully_shard", None)
        module.__class__ = next(c for c in type(module).__bases__ if not issubclass(c, fsdp))
    for module in root.modules():
        # Markers fully_shard leaves on every managed module for dynamo; rewrap sets them again.
        module.__dict__.pop("_is_fsdp_managed_module", None)
        module.__dict__.pop("_fsdp_use_orig_params", None)


def _convert_state_value(value, old: torch.Tensor, new: torch.Tensor):
    """A state entry of `old` in `new`'s layout: full for plain, sharded like `new` for DTensor."""
    dtensor = _dtensor_type()
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape != old.shape:
        return value
    if dtensor is not None and isinstance(value, dtensor):
        value = value.full_tensor()
    if dtensor is not None and isinstance(new, dtensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(new.device), new.device_mesh, new.placements)
    return value.to(new.device)


def carry_optimizer_state(
    optimizer: torch.optim.Optimizer, before: dict[str, nn.Parameter], after: dict[str, nn.Parameter]
) -> int:
    """Move groups and state from the parameters `before` to those `after`, matched by name.

    Parameters whose object did not change are left alone; returns how many were moved. Every
    rank walks the names in the same order, so DTensor gathers and scatters pair up.
    """
    swap = {id(before[name]): after[name] for name in before if name in after and after[name] is not before[name]}
    if not swap:
        return 0
    for group in optimizer.param_groups:
        group["params"] = [swap.get(id(p), p) for p in group["params"]]
    for name, old in before.items():
        new = after.get(name)
        if new is None or new is old:
            continue
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = {k: _convert_state_value(v, old, new) for k, v in state.items()}
    return len(swap)


class Rebuilder:
    """The user's wrapper around the worker's root module, rebuilt at structural boundaries."""

    def __init__(
        self,
        root: nn.Module,
        optimizer: torch.optim.Optimizer,
        wrap: Callable[[nn.Module], nn.Module] | None,
        job: str,
    ) -> None:
        self.root = root
        self.optimizer = optimizer
        self.wrap = wrap
        self.job = job
        self.rebuilds = 0
        """Rewraps after the initial wrap."""
        self.model: nn.Module = root
        self.wrapped = False
        self._compiled = False
        if wrap is not None:
            self._wrap()

    def unwrap(self) -> None:
        """Drop the wrapper; un-shard an FSDP2 model in place. No-op when already unwrapped."""
        if not self.wrapped:
            return
        before = dict(self.root.named_parameters())
        self._compiled = is_compiled(self.model)
        self.model = self.root
        self.wrapped = False
        if is_fully_sharded(self.root):
            strip_fully_shard(self.root)
        carry_optimizer_state(self.optimizer, before, dict(self.root.named_parameters()))

    def unwrap_if_sharded(self) -> None:
        """Un-shard an FSDP2 model before a boundary touches tensors (probes on copies, folds)."""
        if self.wrapped and is_fully_sharded(self.root):
            self.unwrap()

    def finish(self, changed: bool) -> bool:
        """Rewrap when the structure changed or the model was unwrapped; True when rebuilt."""
        if self.wrap is None or not (changed or not self.wrapped):
            return False
        self.rewrap()
        return True

    def rewrap(self) -> None:
        """Unwrap if needed, then `wrap(root)` again; counts a rebuild (only with a `wrap`)."""
        self.unwrap()
        reset = self._compiled
        if reset:
            torch._dynamo.reset()
        self._wrap()
        self.rebuilds += 1
        log.info("model_rebuilt", job=self.job, rebuilds=self.rebuilds, compile_reset=reset)

    def _wrap(self) -> None:
        before = dict(self.root.named_parameters())
        self.model = self.wrap(self.root)
        self.wrapped = True
        self._compiled = False
        carry_optimizer_state(self.optimizer, before, dict(self.root.named_parameters()))


def local_tensors(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's storage of each parameter: the local shard of a DTensor, else the tensor itself.

    The shard is a view of the parameter's storage, so in-place optimiser updates show in it.
    """
    dtensor = _dtensor_type()
    return [p.to_local() if dtensor is not None and isinstance(p, dtensor) else p for p in params]


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` as plain full tensors, cloned: each DTensor gathered (a collective under
    FSDP2, so every rank calls it)."""
    dtensor = _dtensor_type()
    return {
        name: (t.full_tensor() if dtensor is not None and isinstance(t, dtensor) else t).detach().clone()
        for name, t in module.state_dict().items()
    }
