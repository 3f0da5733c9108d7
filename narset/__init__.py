"""Narset: the control plane that issues AdaptationCommands to training jobs running Kasmina.

Importing `narset` is light (no server, no torch): the worker side imports the contract helpers
`narset.contract.scaffold_policy`, `narset.contract.catalogue` and the generated `narset.v1` messages.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
