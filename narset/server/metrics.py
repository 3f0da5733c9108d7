"""Prometheus metrics of Narset, served by `narset serve --metrics-address`.

Two kinds. What the server measures as it works (RPC and exchange latency, refusals, store commit
latency) lives in ordinary counters and histograms, reset when the process restarts. What the store
already knows (jobs, commands, scaffolds, decisions and their gate verdicts) is counted from the store
at scrape time by `StoreCollector`, so it is right after a restart and on every replica, and the
control plane carries no metrics code.

Label sets are bounded: methods, status codes, reason codes, states, actions, outcomes, issuer kinds
and gate names are fixed by the contract. A job id becomes a label only with `metrics_job_labels`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from narset.control.decisions import BREAKER_ISSUER
from narset.control.ledger import GATES_ISSUER
from narset.control.tactical import POLICY_ISSUER
from narset.store import Store, open_store
from narset.v1 import command_pb2, job_pb2, telemetry_pb2

__all__ = ["Metrics", "MetricsEndpoint", "StoreCollector", "issuer_kind"]

log = structlog.get_logger("narset.server")

# RPCs and exchanges take about a millisecond on a local store; a slow disk or a big report, seconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def issuer_kind(issued_by: str) -> str:
    """The bounded source of a decision: gates, breaker, policy, or operator (any principal's name)."""
    if issued_by == GATES_ISSUER:
        return "gates"
    if issued_by == BREAKER_ISSUER:
        return "breaker"
    if issued_by.startswith(POLICY_ISSUER.partition(":")[0] + ":"):
        return "policy"
    return "operator"


class Metrics:
    """The server's own instruments, in a registry of their own (not the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # no auto_describe: it would scrape the store at registration
        self.rpc_seconds = Histogram(
            "narset_rpc_seconds",
            "Duration of WorkerService and OperatorService calls (streams: until they end), by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpcs = Counter(
            "narset_rpcs", "Finished calls by method and gRPC status code.", ["method", "code"], registry=self.registry
        )
        self.exchange_seconds = Histogram(
            "narset_exchange_seconds",
            "Time the exchange takes to handle an attach or a boundary report, inside the call's transaction.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "narset_refusals",
            "Calls refused, by reason code (narset.contract.reasons).",
            ["reason"],
            registry=self.registry,
        )
        self.store_commit_seconds = Histogram(
            "narset_store_commit_seconds",
            "Duration of the store's COMMIT (the write-ahead log write, and its fsync with synchronous=full).",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.rpc_seconds.labels(method).observe(seconds)
        self.rpcs.labels(method, code.name).inc()


@dataclass
class _Snapshot:
    """Counts of the store's state, each keyed by its label values (the job id first with job labels)."""

    jobs: Tally = field(default_factory=Tally)
    workers: Tally = field(default_factory=Tally)
    commands: Tally = field(default_factory=Tally)
    scaffolds: Tally = field(default_factory=Tally)
    decisions: Tally = field(default_factory=Tally)
    verdicts: Tally = field(default_factory=Tally)


def _state_name(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _snapshot(store: Store, job_labels: bool) -> _Snapshot:
    """Count the store's jobs, commands, live scaffolds, decisions and verdicts."""
    counts = _Snapshot()
    if not job_labels:  # unlabelled gauges read 0, not absent, before the first job
        counts.workers[()] = counts.scaffolds[()] = 0
    for job in store.list_jobs():
        key = (job.job_id,) if job_labels else ()
        counts.jobs[(*key, _state_name(job_pb2.JobState, job.state, "JOB_STATE_"))] += 1
        if job.state == job_pb2.JOB_STATE_ATTACHED:
            counts.workers[key] += job.world_size
        counts.scaffolds[key] += store.count_live_scaffolds(job.job_id)
        for record in store.list_commands(job.job_id):
            state = _state_name(command_pb2.CommandState, record.state, "COMMAND_STATE_")
            counts.commands[(*key, state, record.command.WhichOneof("action") or "none")] += 1
        for decision in store.list_decisions(job.job_id):
            outcome = _state_name(telemetry_pb2.DecisionOutcome, decision.outcome, "DECISION_OUTCOME_")
            counts.decisions[(*key, outcome, issuer_kind(decision.issued_by))] += 1
            for verdict in decision.verdicts:
                counts.verdicts[(*key, verdict.gate, "pass" if verdict.passed else "fail")] += 1
    return counts


def _family(kind: type, name: str, doc: str, labels: list[str], tally: Tally) -> Metric:
    family = kind(name, doc, labels=labels)
    for key, value in sorted(tally.items()):
        family.add_metric(list(key), value)
    return family


class StoreCollector(Collector):
    """Counts from the store (its file, or its PostgreSQL database) at scrape time, over a connection of
    the scrape's own.

    Not the server's connection: that one belongs to the event loop, and counting there would hold
    up every RPC for the length of a scrape. A WAL reader sees the last commit and blocks no writer.
    """

    def __init__(self, location: str, job_labels: bool) -> None:
        self._location, self._job_labels = location, job_labels

    def _read(self) -> _Snapshot:
        store = open_store(self._location)
        try:
            return _snapshot(store, self._job_labels)
        finally:
            store.close()

    def collect(self) -> Iterator[Metric]:
        counts = self._read()
        job = ["job"] if self._job_labels else []
        yield _family(GaugeMetricFamily, "narset_jobs", "Jobs by state.", [*job, "state"], counts.jobs)
        yield _family(
            GaugeMetricFamily,
            "narset_attached_workers",
            "Training processes (ranks) of attached jobs.",
            job,
            counts.workers,
        )
        yield _family(
            GaugeMetricFamily,
            "narset_commands",
            "Commands by state and kind (action).",
            [*job, "state", "kind"],
            counts.commands,
        )
        yield _family(GaugeMetricFamily, "narset_scaffolds_live", "Scaffolds in a live stage.", job, counts.scaffolds)
        yield _family(
            CounterMetricFamily,
            "narset_decisions",
            "Decisions by outcome and source (issuer kind).",
            [*job, "outcome", "source"],
            counts.decisions,
        )
        yield _family(
            CounterMetricFamily,
            "narset_gate_verdicts",
            "Gate verdicts of stored decisions by gate and result.",
            [*job, "gate", "result"],
            counts.verdicts,
        )


class MetricsEndpoint:
    """The HTTP endpoint (`/metrics`) on its own thread; `close()` stops it."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, _, port = address.rpartition(":")
        self._server, self._thread = start_http_server(int(port), host.strip("[]"), registry)
        self.port: int = self._server.server_port
        log.info("metrics.started", address=f"{host}:{self.port}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
