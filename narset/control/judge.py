"""Narset judges the gates the worker measured (docs/design.md, section 5): verdicts against thresholds.

`judge` is a pure function; `judge_scaffold` feeds it a stored scaffold's last telemetry and the
history Narset holds. An unmeasured gate fails. G2's residual gain is computed here, from the
probe-loss history, because only Narset sees the pre-deploy trend. G5's step-time ratio is judged
on every reading of the scaffold's life, not the last: a wall-clock interval is at the mercy of
whatever else the machine ran, so one noisy boundary must not decide (`step_time_statistic`).
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from narset.contract.rules import raised_flags
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = [
    "MIN_TREND_POINTS",
    "TREND_WINDOW",
    "GateJudgement",
    "judge",
    "judge_scaffold",
    "residual_gain",
    "step_time_statistic",
    "trend_slope",
]

TREND_WINDOW = 5  # pre-deploy boundaries whose probe losses give G2's trend
# Fewer pre-deploy losses than this give no trend: two points are a secant, all noise, and the first
# boundaries of a training run fall steeply, so a secant extrapolated over a scaffold's life predicts
# an improvement no run makes, and would fail every scaffold deployed that early (a warm start).
MIN_TREND_POINTS = 3


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
    alone. With fewer than MIN_TREND_POINTS losses there is no trend and the loss at deploy is the
    prediction. Positive when the host ends better than the prediction. None when unmeasurable.
    """
    if not pre_deploy or host_after_exit is None or not math.isfinite(host_after_exit):
        return None
    at_deploy = pre_deploy[-1]
    if at_deploy == 0 or not math.isfinite(at_deploy):
        return None
    # A falling trend predicts further improvement; a rising one is not credited to the scaffold.
    slope = min(trend_slope(pre_deploy), 0.0) if len(pre_deploy) >= MIN_TREND_POINTS else 0.0
    predicted = at_deploy + slope * age_ckpts
    return (predicted - host_after_exit) / abs(at_deploy)


def step_time_statistic(ratios: Sequence[float]) -> float | None:
    """G5's step-time value from every reading of a scaffold's life: their low median (None without one).

    The low median is a reading that at least half of the readings reach or exceed, so the gate fails
    only when most readings (both of two) are over the limit: one slow boundary on a busy machine
    cannot prune a scaffold that has two or more readings.
    """
    finite = [r for r in ratios if math.isfinite(r)]
    return statistics.median_low(finite) if finite else None


def _verdict(
    gate: str, value: float | None, threshold: float, passes, hard: bool, samples: int = 0
) -> telemetry_pb2.GateVerdict:
    verdict = telemetry_pb2.GateVerdict(gate=gate, threshold=threshold, hard=hard, samples=samples)
    if value is not None:
        verdict.value = value
        verdict.passed = bool(math.isfinite(value) and passes(value, threshold))
    return verdict


def _get(gates: telemetry_pb2.GateTelemetry, name: str) -> float | None:
    return getattr(gates, name) if gates.HasField(name) else None


def judge(
    gates: telemetry_pb2.GateTelemetry,
    thresholds: command_pb2.GateThresholds,
    gain: float | None,
    step_time_ratios: Sequence[float],
) -> GateJudgement:
    """Every gate's verdict on the last telemetry `gates`, except G2 (`gain`, from `residual_gain`) and
    G5's step time (`step_time_ratios`, every reading of the scaffold's life, via `step_time_statistic`)."""
    le, ge = operator.le, operator.ge
    step_time = step_time_statistic(step_time_ratios)
    verdicts = (
        _verdict("G1", _get(gates, "transfer_rel_delta"), thresholds.transfer_epsilon, le, hard=False),
        _verdict("G2", gain, thresholds.residual_gain_gamma, ge, hard=False),
        _verdict("G3", _get(gates, "foldability"), thresholds.foldability_theta, ge, hard=False),
        _verdict("G4.jitter", _get(gates, "jitter_p95"), thresholds.jitter_p95_max, le, hard=True),
        _verdict("G4.drift", _get(gates, "drift"), thresholds.drift_max, le, hard=True),
        _verdict("G4.diversity", _get(gates, "diversity"), thresholds.diversity_min, ge, hard=True),
        _verdict(
            "G5.step_time", step_time, thresholds.step_time_ratio_max, le, hard=True, samples=len(step_time_ratios)
        ),
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


def _step_time_ratios(store: Store, scaffold: job_pb2.Scaffold) -> list[float]:
    """The step-time readings of every boundary `scaffold` reported since its deploy, oldest first."""
    return [
        entry.gates.step_time_ratio
        for entry in store.scaffold_history(scaffold.job_id, scaffold.scaffold_id)
        if entry.gates.HasField("step_time_ratio")
    ]


def judge_scaffold(store: Store, scaffold: job_pb2.Scaffold, probe_loss: float | None) -> GateJudgement:
    """Verdicts of every gate for `scaffold` on its stored history, last telemetry and `probe_loss` now."""
    gates = scaffold.gates
    host_after = None
    if probe_loss is not None and gates.HasField("transfer_rel_delta"):
        host_after = probe_loss * (1.0 + gates.transfer_rel_delta)
    pre = _probe_losses(
        store, scaffold.job_id, scaffold.deployed_boundary - TREND_WINDOW + 1, scaffold.deployed_boundary
    )
    gain = residual_gain(pre, host_after, scaffold.age_ckpts)
    return judge(gates, scaffold.policy.gates, gain, _step_time_ratios(store, scaffold))
