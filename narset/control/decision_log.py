"""Every decision (gates, breaker, tactical policy, operator) is stored and announced the same way."""

from __future__ import annotations

import time

from narset.control.events import EventHub
from narset.store import Store
from narset.v1 import job_pb2, telemetry_pb2

__all__ = ["record_decision"]


def record_decision(store: Store, events: EventHub, decision: telemetry_pb2.Decision) -> telemetry_pb2.Decision:
    """Stamp, store and announce `decision`, inside the caller's transaction."""
    decision.created_at.FromNanoseconds(time.time_ns())
    store.put_decision(decision)
    outcome = telemetry_pb2.DecisionOutcome.Name(decision.outcome).removeprefix("DECISION_OUTCOME_")
    events.emit(
        decision.job_id,
        job_pb2.EVENT_KIND_DECISION_MADE,
        f"{outcome} {decision.scaffold_id} at boundary {decision.boundary} by {decision.issued_by}: {decision.reason}",
        scaffold_id=decision.scaffold_id,
        outcome=outcome.lower(),
        command_id=decision.command_id,
        forced=decision.forced,
    )
    return decision
