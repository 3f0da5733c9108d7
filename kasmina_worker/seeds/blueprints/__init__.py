"""Blueprints: the registry and the built-in seeds (registered on import)."""

from kasmina_worker.seeds.blueprints import builtin as _builtin  # noqa: F401  (registers the built-ins)
from kasmina_worker.seeds.blueprints.registry import (
    BlueprintSpec,
    BuildContext,
    Seed,
    blueprint_names,
    get_blueprint,
    register_blueprint,
)

__all__ = ["BlueprintSpec", "BuildContext", "Seed", "blueprint_names", "get_blueprint", "register_blueprint"]
