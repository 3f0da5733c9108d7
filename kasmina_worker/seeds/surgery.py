"""Module-tree surgery by qualified name (boundaries only)."""

from __future__ import annotations

from torch import nn

__all__ = ["replace_module"]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` at the qualified `name` under `root`; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old
