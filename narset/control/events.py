"""Durable events with live fan-out: stored in the same transaction as the change they describe,
then announced to `narset watch` streams.

The wake-up is per process. On a store that other replicas write too (PostgreSQL), a following
watch also looks at the store every `SHARED_POLL_S`, so it sees every replica's events, in sequence
order (the store makes sequence order commit order), at most that much later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog

from narset.store import Store
from narset.v1 import job_pb2

__all__ = ["SHARED_POLL_S", "EventHub"]

log = structlog.get_logger("narset.control.events")

SHARED_POLL_S = 0.5
WATCH_PAGE = 500  # events read from the store at a time


class EventHub:
    """Appends events to the store and wakes watchers; all calls from the event-loop thread."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._changed = asyncio.Event()
        self._closed = False
        self._poll_s = SHARED_POLL_S if store.shared else None

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
            page = self._store.events_after(last, job_id, limit=WATCH_PAGE)
            for event in page:
                last = event.sequence
                yield event
            if len(page) == WATCH_PAGE:
                continue  # more are stored: a watch without follow ends after the last, not after a page
            if not follow or self._closed:
                return
            if self._store.events_after(last, job_id, limit=1):
                continue
            if self._poll_s is None:
                await changed.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self._poll_s)
