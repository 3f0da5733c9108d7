"""Narset judges the gates the worker measured (docs/design.md, section 5): verdicts against thresholds.

`judge` is a pure function; `judge_scaffold` feeds it a stored scaffold's last telemetry. An
unmeasured gate fails. G2's residual gain is computed here, from the probe-loss history Narset
holds, because only Narset sees the pre-deploy trend.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from narset.contract.rules import raised_flags
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = ["TREND_WINDOW", "GateJudgement", "judge", "judge_scaffold", "residual_gain", "trend_slope"]

TREND_WINDOW = 5  # pre-deploy boundaries whose probe losses give G2's trend


@dataclass(frozen=True, slots=True)
class GateJudgement:
    verdicts: tuple[telemetry_pb2.GateVerdict, ...]
    flags: tuple[str, ...]  # safety flags raised by the worker

    @property
    def hard_failures(self) -> list[str]:
        return [v.gate for v in self.verdicts if v.hard and not v.passed]

    @property
    def soft_failures(self) -> list[str]:
        return [v.gate for v in self.verdicts if not v.hard and not v.passed]

    @property
    def residual_gain_passes(self) -> bool:
        return any(v.gate == "G2" and v.passed for v in self.verdicts)


def trend_slope(values: Sequence[float]) -> float:
    """Least-squares slope per boundary of `values` (0 with fewer than two points)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def residual_gain(pre_deploy: Sequence[float], host_after_exit: float | None, age_ckpts: int) -> float | None:
    """Relative improvement of the host's probe loss over the scaffold's life beyond the pre-deploy trend.

    `pre_deploy` are whole-model probe losses up to the deploy boundary (the last one is the loss at
    deploy); the trend extrapolated over `age_ckpts` boundaries is what the host would have reached
    alone. Positive when the host ends better than the trend predicts. None when unmeasurable.
    """
    if not pre_deploy or host_after_exit is None or not math.isfinite(host_after_exit):
        return None
    at_deploy = pre_deploy[-1]
    if at_deploy == 0 or not math.isfinite(at_deploy):
        return None
    # A falling trend predicts further improvement; a rising one is not credited to the scaffold.
    slope = min(trend_slope(pre_deploy), 0.0)
    predicted = at_deploy + slope * age_ckpts
    return (predicted - host_after_exit) / abs(at_deploy)


def _verdict(gate: str, value: float | None, threshold: float, passes, hard: bool) -> telemetry_pb2.GateVerdict:
    verdict = telemetry_pb2.GateVerdict(gate=gate, threshold=threshold, hard=hard)
    if value is not None:
        verdict.value = value
        verdict.passed = bool(math.isfinite(value) and passes(value, threshold))
    return verdict


def _get(gates: telemetry_pb2.GateTelemetry, name: str) -> float | None:
    return getattr(gates, name) if gates.HasField(name) else None


def judge(
    gates: telemetry_pb2.GateTelemetry, thresholds: command_pb2.GateThresholds, gain: float | None
) -> GateJudgement:
    """Every gate's verdict; `gain` is G2's residual gain from `residual_gain`."""
    le, ge = operator.le, operator.ge
    verdicts = (
        _verdict("G1", _get(gates, "transfer_rel_delta"), thresholds.transfer_epsilon, le, hard=False),
        _verdict("G2", gain, thresholds.residual_gain_gamma, ge, hard=False),
        _verdict("G3", _get(gates, "foldability"), thresholds.foldability_theta, ge, hard=False),
        _verdict("G4.jitter", _get(gates, "jitter_p95"), thresholds.jitter_p95_max, le, hard=True),
        _verdict("G4.drift", _get(gates, "drift"), thresholds.drift_max, le, hard=True),
        _verdict("G4.diversity", _get(gates, "diversity"), thresholds.diversity_min, ge, hard=True),
        _verdict("G5.step_time", _get(gates, "step_time_ratio"), thresholds.step_time_ratio_max, le, hard=True),
        _verdict("G5.memory", _get(gates, "memory_fraction"), thresholds.memory_fraction_max, le, hard=True),
    )
    return GateJudgement(verdicts=verdicts, flags=raised_flags(gates))


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
