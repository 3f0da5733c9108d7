"""Narset judges the gates the worker measured (docs/design.md, section 5): verdicts against thresholds.

`judge` is a pure function; `judge_scaffold` feeds it a stored scaffold's last telemetry and the
job's stored reports. An unmeasured gate fails. Two gates are computed here from the reports,
because only Narset holds the job's history: G2's residual gain (the pre-deploy probe-loss trend)
and G5's step-time ratio, from the job's reported step times over the scaffold's whole life against
those before its deploy (`step_time_statistic`): a wall-clock interval is at the mercy of whatever
else the machine ran, so no single interval, before or after the deploy, may decide. G4's jitter and
drift limits also come from the reports: a mini-batch job's step loss is noisy whatever is
deployed, so a scaffold fails them only by making the loss noisier than the job itself was before
its deploy (`stability_limits`), never by the job's own noise.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from narset.contract.limits import MAX_BOUNDARY
from narset.contract.rules import raised_flags
from narset.store import Store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2, worker_service_pb2

__all__ = [
    "MIN_TREND_POINTS",
    "TREND_WINDOW",
    "NOISE_FACTOR",
    "GateJudgement",
    "JobNoise",
    "Reading",
    "judge",
    "judge_scaffold",
    "job_noise",
    "residual_gain",
    "stability_limits",
    "step_time_statistic",
    "trend_slope",
]

TREND_WINDOW = 5  # pre-deploy boundaries whose probe losses give G2's trend
# Fewer pre-deploy losses than this give no trend: two points are a secant, all noise, and the first
# boundaries of a training run fall steeply, so a secant extrapolated over a scaffold's life predicts
# an improvement no run makes, and would fail every scaffold deployed that early (a warm start).
MIN_TREND_POINTS = 3
# G4 tolerates a live scaffold's step losses up to this many times the job's own pre-deploy noise.
NOISE_FACTOR = 2.0


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


class Reading(NamedTuple):
    """A gate's value and the number of boundaries it summarises."""

    value: float | None
    samples: int


def step_time_statistic(before: Sequence[float], during: Sequence[float]) -> Reading:
    """G5's step-time ratio: the low median of the step times of the scaffold's life (`during`) over the
    median of those of the boundaries before its deploy (`before`), both the job's reported interval means.

    Both ends are robust: a single interval is at the mercy of whatever else the machine ran, the
    pre-deploy one as much as any. The low median of `during` is a value that at least half of them
    reach, so the ratio fails its limit only when most (both, of two) of the scaffold's intervals
    are over it. The samples are the intervals of its life; no interval on either side: unmeasured.
    """
    before = [t for t in before if math.isfinite(t) and t > 0]
    during = [t for t in during if math.isfinite(t)]
    if not before or not during:
        return Reading(None, len(during))
    return Reading(statistics.median_low(during) / statistics.median(before), len(during))


class JobNoise(NamedTuple):
    """The job's own step-loss noise before a deploy, and its mean step loss now (G4's reference)."""

    step_change: float
    """Median over the pre-deploy reports of their p95 of `|L_t − L_{t−1}|`."""
    mean_loss: float
    """The mean step loss of the latest report."""


def job_noise(before: Sequence[float], latest_mean: float | None) -> JobNoise | None:
    """The job's noise from the pre-deploy reports' `loss_noise` and the latest `loss_mean`; None if unreported."""
    before = [v for v in before if math.isfinite(v) and v >= 0]
    if not before or latest_mean is None or not math.isfinite(latest_mean) or latest_mean == 0:
        return None
    return JobNoise(statistics.median(before), latest_mean)


def stability_limits(thresholds: command_pb2.GateThresholds, noise: JobNoise | None) -> tuple[float, float]:
    """G4's jitter and drift limits: the policy's, or `NOISE_FACTOR` times the job's own noise where that is larger.

    Jitter is relative to the loss, so the job's absolute pre-deploy step change is taken relative to
    the loss level now: as a classifier's loss falls towards 0, the same batch noise is a larger
    relative change, with or without a scaffold. Drift (a difference of window means, in loss units)
    is allowed the job's step change itself.
    """
    if noise is None:
        return thresholds.jitter_p95_max, thresholds.drift_max
    jitter = NOISE_FACTOR * noise.step_change / abs(noise.mean_loss)
    return max(thresholds.jitter_p95_max, jitter), max(thresholds.drift_max, NOISE_FACTOR * noise.step_change)


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


def _diversity_floor(gates: telemetry_pb2.GateTelemetry, thresholds: command_pb2.GateThresholds) -> float:
    """G4's diversity limit: `diversity_min`, or the host's own diversity at the site where that is lower.

    The gate is there to catch a scaffold that collapses the site's features. A host whose features
    were correlated before the scaffold came (a rank-deficient layer, the very case a scaffold can
    repair) would otherwise fail every scaffold on it: there the scaffold must only not make it worse.
    """
    host = _get(gates, "host_diversity")
    return thresholds.diversity_min if host is None else min(thresholds.diversity_min, host)


def judge(
    gates: telemetry_pb2.GateTelemetry,
    thresholds: command_pb2.GateThresholds,
    gain: float | None,
    step_time: Reading,
    noise: JobNoise | None = None,
) -> GateJudgement:
    """Every gate's verdict on the last telemetry `gates`, except G2 (`gain`, from `residual_gain`) and
    G5's step time (from `step_time_statistic`); G4's stability limits allow the job's own `noise`."""
    le, ge = operator.le, operator.ge
    jitter_limit, drift_limit = stability_limits(thresholds, noise)
    verdicts = (
        _verdict("G1", _get(gates, "transfer_rel_delta"), thresholds.transfer_epsilon, le, hard=False),
        _verdict("G2", gain, thresholds.residual_gain_gamma, ge, hard=False),
        _verdict("G3", _get(gates, "foldability"), thresholds.foldability_theta, ge, hard=False),
        _verdict("G4.jitter", _get(gates, "jitter_p95"), jitter_limit, le, hard=True),
        _verdict("G4.drift", _get(gates, "drift"), drift_limit, le, hard=True),
        _verdict("G4.diversity", _get(gates, "diversity"), _diversity_floor(gates, thresholds), ge, hard=True),
        _verdict("G5.step_time", step_time.value, thresholds.step_time_ratio_max, le, True, step_time.samples),
        _verdict("G5.memory", _get(gates, "memory_fraction"), thresholds.memory_fraction_max, le, hard=True),
    )
    return GateJudgement(verdicts=verdicts, flags=raised_flags(gates))


def _field(reports: Sequence[worker_service_pb2.ReportBoundaryRequest], name: str) -> list[float]:
    return [getattr(r, name) for r in reports if r.HasField(name)]


def judge_scaffold(store: Store, scaffold: job_pb2.Scaffold, probe_loss: float | None) -> GateJudgement:
    """Verdicts of every gate for `scaffold` on the job's stored reports, its last telemetry and `probe_loss` now."""
    gates = scaffold.gates
    host_after = None
    if probe_loss is not None and gates.HasField("transfer_rel_delta"):
        host_after = probe_loss * (1.0 + gates.transfer_rel_delta)
    deployed = scaffold.deployed_boundary
    # The report of the deploy boundary covers the last interval before the scaffold existed.
    reports = [
        (boundary, worker_service_pb2.ReportBoundaryRequest.FromString(body))
        for boundary, body in store.report_bodies(scaffold.job_id, deployed - TREND_WINDOW + 1, MAX_BOUNDARY)
    ]
    before = [r for boundary, r in reports if boundary <= deployed]
    during = [r for boundary, r in reports if boundary > deployed]
    gain = residual_gain(_field(before, "probe_loss"), host_after, scaffold.age_ckpts)
    step_time = step_time_statistic(_field(before, "step_time_ms"), _field(during, "step_time_ms"))
    means = _field([r for _, r in reports], "loss_mean")
    noise = job_noise(_field(before, "loss_noise"), means[-1] if means else None)
    return judge(gates, scaffold.policy.gates, gain, step_time, noise)
