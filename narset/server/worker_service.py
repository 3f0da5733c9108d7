"""WorkerService: what a job's rank 0 calls at attach, at each checkpoint boundary, and at the end."""

from __future__ import annotations

import grpc

from narset.control.exchange import Exchange
from narset.v1 import worker_service_pb2 as pb
from narset.v1 import worker_service_pb2_grpc

__all__ = ["WorkerService"]


class WorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def Attach(self, request: pb.AttachRequest, context: grpc.aio.ServicerContext) -> pb.AttachResponse:
        return self._exchange.attach(request)

    async def ReportBoundary(
        self, request: pb.ReportBoundaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportBoundaryResponse:
        return self._exchange.report(request)

    async def Detach(self, request: pb.DetachRequest, context: grpc.aio.ServicerContext) -> pb.DetachResponse:
        self._exchange.detach(request)
        return pb.DetachResponse()
