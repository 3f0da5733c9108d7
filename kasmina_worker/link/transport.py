"""Where a boundary's commands come from: the seam between the worker and a control plane.

A `CommandSource` takes the boundary report and answers the commands to apply now, in order.
`LocalQueue` is local mode (commands submitted in-process); a Narset client is another source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from narset.v1 import command_pb2, worker_service_pb2

__all__ = ["CommandSource", "LocalQueue"]


@runtime_checkable
class CommandSource(Protocol):
    """One exchange per boundary: the report out, the commands due now back."""

    def exchange(self, report: worker_service_pb2.ReportBoundaryRequest) -> Sequence[command_pb2.AdaptationCommand]: ...


class LocalQueue:
    """Commands submitted in-process, handed out at the next boundary in submission order."""

    def __init__(self) -> None:
        self._queue: list[command_pb2.AdaptationCommand] = []
        self.assigned = 0

    def submit(self, command: command_pb2.AdaptationCommand) -> str:
        """Queue a copy of `command`, assigning `local-<n>` when it has no command id; returns the id."""
        queued = command_pb2.AdaptationCommand()
        queued.CopyFrom(command)
        if not queued.command_id:
            self.assigned += 1
            queued.command_id = f"local-{self.assigned}"
        self._queue.append(queued)
        return queued.command_id

    def exchange(self, report: worker_service_pb2.ReportBoundaryRequest) -> list[command_pb2.AdaptationCommand]:
        due, self._queue = self._queue, []
        return due

    def state_dict(self) -> dict:
        return {"pending": [c.SerializeToString() for c in self._queue], "assigned": self.assigned}

    def load_state_dict(self, state: dict) -> None:
        self._queue = [command_pb2.AdaptationCommand.FromString(b) for b in state["pending"]]
        self.assigned = int(state["assigned"])
