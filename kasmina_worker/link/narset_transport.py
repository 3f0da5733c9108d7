"""The job's exchange with Narset at each boundary: attach (with the restored state), report,
receive the commands due now; re-attach and resend after failures; never fail training.

All gRPC lives in the `kasmina_worker.link.worker_link` child process, so this process can fork freely.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog

from kasmina_worker.link.worker_link import LinkError, WorkerLink
from narset.contract.limits import fit_to_ranges
from narset.contract.reasons import JOB_NOT_FOUND, SESSION_SUPERSEDED, STORE_UNAVAILABLE
from narset.v1 import command_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["NarsetTransport"]

log = structlog.get_logger("kasmina.narset")

_ENDED = (telemetry_pb2.SCAFFOLD_STAGE_FUSED, telemetry_pb2.SCAFFOLD_STAGE_PRUNED)
_REATTACH_REASONS = (SESSION_SUPERSEDED, JOB_NOT_FOUND)


def _clear_non_finite(message) -> None:
    for descriptor, value in message.ListFields():
        if isinstance(value, float) and not math.isfinite(value):
            message.ClearField(descriptor.name)


def _drop_non_finite(report: worker_service_pb2.ReportBoundaryRequest) -> None:
    """Narset refuses a report carrying NaN/Inf; an unset value reads as unmeasured instead."""
    for name in ("probe_loss", "step_time_ms", "loss_noise", "loss_mean"):
        if report.HasField(name) and not math.isfinite(getattr(report, name)):
            report.ClearField(name)
    for name in [name for name, value in report.metrics.items() if not math.isfinite(value)]:
        del report.metrics[name]
    for scaffold in report.scaffolds:
        _clear_non_finite(scaffold.gates)
    for signal in report.region_signals:
        _clear_non_finite(signal)


def _fit(message, kind: str) -> None:
    """Narset refuses a whole message with a number outside its documented range; a rounding slip (alpha a
    hair below 0) would otherwise hold back every later attach or report, and the commands due."""
    fitted = fit_to_ranges(message)
    if fitted:
        log.warning("narset_message_fitted", job=message.job_id, message=kind, fields=fitted)


class NarsetTransport:
    """A `CommandSource` backed by a Narset server; every call returns within its timeout."""

    def __init__(
        self,
        address: str,
        registration: Callable[[], worker_service_pb2.AttachRequest],
        timeout_s: float = 5.0,
        token: str | None = None,
    ) -> None:
        self.address = address
        self._registration = registration
        self._link = WorkerLink(address, timeout_s, token)
        self._link.start()  # the child's interpreter starts while the job trains
        # The session's worker credential (a secret Narset returns only at attach); None: attach first.
        self.session_id: str | None = None
        # The last credential Narset issued, shown at re-attach: it lets the job take its own job back.
        self._last_session = ""
        self.job_id: str | None = None
        # Results and exit reports of a report Narset never received: they go out with the next one.
        self._held_results: list[telemetry_pb2.CommandResult] = []
        self._held_exits: list[telemetry_pb2.ScaffoldReport] = []
        self.last_error: LinkError | None = None

    @property
    def attached(self) -> bool:
        return self.session_id is not None

    def _attach(self) -> None:
        request = self._registration()
        request.session_id = self._last_session
        _fit(request, "attach")
        response = self._link.call("Attach", request)
        self.session_id, self.job_id = response.session_id, request.job_id
        self._last_session = response.session_id
        log.info(
            "narset_attached",
            job=request.job_id,
            address=self.address,
            resumed_from=request.restored.boundary,
            redeliver=list(response.redeliver_command_ids),
        )

    def exchange(self, report: worker_service_pb2.ReportBoundaryRequest) -> list[command_pb2.AdaptationCommand]:
        outgoing = worker_service_pb2.ReportBoundaryRequest()
        outgoing.CopyFrom(report)
        _drop_non_finite(outgoing)
        _fit(outgoing, "report")
        held_ids = {r.command_id for r in self._held_results}
        fresh_results = [r for r in outgoing.results if r.command_id not in held_ids]
        del outgoing.results[:]
        outgoing.results.extend(self._held_results + fresh_results)
        outgoing.scaffolds.extend(self._held_exits)
        try:
            response = self._report(outgoing)
        except LinkError as error:
            self.last_error = error
            self._held_results = list(outgoing.results)
            self._held_exits = [s for s in outgoing.scaffolds if s.stage in _ENDED]
            if not error.refused and error.reason != STORE_UNAVAILABLE:
                # Narset may come back restarted or on a fresh store: register again before reporting.
                self.session_id = None
            # A report answered STORE_UNAVAILABLE changed nothing and Narset still holds the session: the
            # next boundary's report, with these results, is its retry (not this one again, which would
            # stall training for a second wait).
            log.warning("narset_exchange_failed", job=report.job_id, boundary=report.boundary, error=str(error))
            return []
        self.last_error = None
        self._held_results, self._held_exits = [], []
        for decision in response.decisions:
            log.info(
                "narset_decision",
                job=report.job_id,
                scaffold_id=decision.scaffold_id,
                outcome=telemetry_pb2.DecisionOutcome.Name(decision.outcome),
                reason=decision.reason,
            )
        return list(response.commands)

    def _report(self, report: worker_service_pb2.ReportBoundaryRequest) -> worker_service_pb2.ReportBoundaryResponse:
        """Send the report, attaching first when needed and once more if Narset superseded the session."""
        for attempt in range(2):
            if self.session_id is None:
                self._attach()
            report.session_id = self.session_id
            try:
                return self._link.call("ReportBoundary", report)
            except LinkError as error:
                # A newer attach took over, or Narset lost the job (fresh store): attach again, once.
                if attempt == 0 and error.reason in _REATTACH_REASONS:
                    self.session_id = None
                    continue
                raise
        raise AssertionError("unreachable")

    def close(self, reason: str = "training finished") -> None:
        """Detach from Narset (best effort, bounded) and stop the link; safe twice."""
        if self.session_id is not None and self.job_id is not None:
            try:
                self._link.call(
                    "Detach",
                    worker_service_pb2.DetachRequest(job_id=self.job_id, session_id=self.session_id, reason=reason),
                )
            except LinkError as error:
                log.warning("narset_detach_failed", job=self.job_id, error=str(error))
            self.session_id = None
        self._link.close()
