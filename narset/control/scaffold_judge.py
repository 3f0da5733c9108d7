"""Gate verdicts of a stored scaffold: its last telemetry plus G2 from the job's probe-loss history."""

from __future__ import annotations

from narset.control.judge import GateJudgement, judge, residual_gain
from narset.store import Store
from narset.v1 import job_pb2, worker_service_pb2

__all__ = ["TREND_WINDOW", "judge_scaffold"]

TREND_WINDOW = 5  # pre-deploy boundaries whose probe losses give G2's trend


def _probe_losses(store: Store, job_id: str, first: int, last: int) -> list[float]:
    losses = []
    for _, body in store.report_bodies(job_id, first, last):
        report = worker_service_pb2.ReportBoundaryRequest.FromString(body)
        if report.HasField("probe_loss"):
            losses.append(report.probe_loss)
    return losses


def judge_scaffold(store: Store, scaffold: job_pb2.Scaffold, probe_loss: float | None) -> GateJudgement:
    """Verdicts of every gate for `scaffold` on its last reported telemetry and `probe_loss` now."""
    gates = scaffold.gates
    host_after = None
    if probe_loss is not None and gates.HasField("transfer_rel_delta"):
        host_after = probe_loss * (1.0 + gates.transfer_rel_delta)
    pre = _probe_losses(
        store, scaffold.job_id, scaffold.deployed_boundary - TREND_WINDOW + 1, scaffold.deployed_boundary
    )
    return judge(gates, scaffold.policy.gates, residual_gain(pre, host_after, scaffold.age_ckpts))
