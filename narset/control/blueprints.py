"""The blueprint catalogue as each job sees it: the built-in blueprints, the same for every job, and the
job's own, which it registers at attach and no other job sees (two jobs may each have a "mine", and one
job's attach never replaces another's).

The store keeps one table of blueprints by name: the built-ins under their names, a job's own under
`<job id>\\x1f<name>` (a job id holds no control character, so the two never meet); a job's own
blueprints come back under their own names.
"""

from __future__ import annotations

from collections.abc import Iterable

from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.store import Store
from narset.v1 import job_pb2

__all__ = ["BUILTIN_NAMES", "BlueprintCatalogue"]

BUILTIN_NAMES = frozenset(b.name for b in BUILTIN_BLUEPRINTS)
_SEPARATOR = "\x1f"


def _stored_name(job_id: str, name: str) -> str:
    return f"{job_id}{_SEPARATOR}{name}"


class BlueprintCatalogue:
    """The blueprints of one store, seen per job."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def register(self, job_id: str, blueprints: Iterable[job_pb2.Blueprint]) -> None:
        """Add or replace `job_id`'s own blueprints (never built-in names: the attach check refuses them)."""
        for blueprint in sorted(blueprints, key=lambda b: b.name):  # one lock order across replicas
            stored = job_pb2.Blueprint()
            stored.CopyFrom(blueprint)
            stored.name = _stored_name(job_id, blueprint.name)
            self._store.put_blueprint(stored)

    def get(self, job_id: str, name: str) -> job_pb2.Blueprint | None:
        """The blueprint `name` as `job_id` sees it, or None."""
        if name in BUILTIN_NAMES:
            return self._store.get_blueprint(name)
        blueprint = self._store.get_blueprint(_stored_name(job_id, name)) if job_id else None
        if blueprint is not None:
            blueprint.name = name
        return blueprint

    def list(self, job_id: str = "") -> list[job_pb2.Blueprint]:
        """The built-ins, and `job_id`'s own blueprints if a job is named; by name."""
        prefix = _stored_name(job_id, "") if job_id else None
        seen = []
        for blueprint in self._store.list_blueprints():
            if prefix is not None and blueprint.name.startswith(prefix):
                blueprint.name = blueprint.name.removeprefix(prefix)
            elif blueprint.name not in BUILTIN_NAMES:
                continue  # another job's (or, from before namespaces, a job's under its bare name)
            seen.append(blueprint)
        return sorted(seen, key=lambda b: b.name)
