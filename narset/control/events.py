"""Durable events with live fan-out: stored in the same transaction as the change they describe,
then announced to `narset watch` streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import structlog

from narset.store import Store
from narset.v1 import job_pb2

__all__ = ["EventHub"]

log = structlog.get_logger("narset.control.events")


class EventHub:
    """Appends events to the store and wakes watchers; all calls from the event-loop thread."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = asyncio.Event()
        self._closed = False

    def emit(self, job_id: str, kind: int, message: str, /, **attributes: object) -> job_pb2.Event:
        """Store and announce an event. Positional-only parameters: any attribute name is free (`kind=`)."""
        event = job_pb2.Event(job_id=job_id, kind=kind, message=message)
        event.created_at.FromNanoseconds(time.time_ns())
        for key, value in attributes.items():
            event.attributes[key] = str(value)
        stored = self._store.append_event(event)
        fields = {**event.attributes, "job_id": job_id, "sequence": stored.sequence, "message": message}
        log.info(job_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_").lower(), **fields)
        self._wake()
        return stored

    def _wake(self) -> None:
        # Swap the event so that each waiter wakes once per change, with no lock to hold.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        """End every follow-mode watch stream (server shutdown)."""
        self._closed = True
        self._wake()

    async def watch(self, job_id: str, after_sequence: int, follow: bool) -> AsyncIterator[job_pb2.Event]:
        """Stored events after `after_sequence`, then (with `follow`) new ones as they happen."""
        last = after_sequence
        while True:
            changed = self._changed
            for event in self._store.events_after(last, job_id):
                last = event.sequence
                yield event
            if not follow or self._closed:
                return
            if self._store.events_after(last, job_id, limit=1):
                continue
            await changed.wait()
