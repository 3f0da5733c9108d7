"""WorkerService: what a job's rank 0 calls at attach, at each checkpoint boundary, and at the end.

The methods are synchronous: the guard (narset/server/guard.py) runs each inside one store
transaction with its audit entry, with the caller already authenticated and authorized.
"""

from __future__ import annotations

import time

import grpc

from narset.control.exchange import Exchange
from narset.server.identity import CALLER
from narset.server.metrics import Metrics
from narset.v1 import job_pb2, worker_service_pb2_grpc
from narset.v1 import worker_service_pb2 as pb

__all__ = ["WorkerService"]


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, exchange: Exchange, stale_session_s: float, metrics: Metrics) -> None:
        self._exchange = exchange
        self._stale_session_s = stale_session_s
        self._exchange_seconds = metrics.exchange_seconds

    def Attach(self, request: pb.AttachRequest, context: grpc.aio.ServicerContext) -> pb.AttachResponse:
        caller = CALLER.get()

        def may_take_over(job: job_pb2.Job) -> bool:
            silent_s = time.time() - job.last_seen_at.ToNanoseconds() / 1e9
            return caller.may_take_over(job.job_id, silent_s, self._stale_session_s)

        with self._exchange_seconds.labels("attach").time():
            return self._exchange.attach(request, may_take_over)

    def ReportBoundary(
        self, request: pb.ReportBoundaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportBoundaryResponse:
        with self._exchange_seconds.labels("report").time():
            return self._exchange.report(request)

    def Detach(self, request: pb.DetachRequest, context: grpc.aio.ServicerContext) -> pb.DetachResponse:
        self._exchange.detach(request)
        return pb.DetachResponse()
