"""Assembles and runs the Narset server: store, services, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.control.decisions import DecisionEngine
from narset.control.events import EventHub
from narset.control.exchange import Exchange
from narset.control.ledger import CommandLedger
from narset.control.tactical import TacticalPolicy
from narset.server.guard import Guard
from narset.server.operator_service import OperatorService
from narset.server.settings import ServerSettings
from narset.server.worker_service import WorkerService
from narset.store import Store
from narset.v1 import (
    operator_service_pb2,
    operator_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

__all__ = ["NarsetServer", "serve"]

log = structlog.get_logger("narset.server")

SERVICE_NAMES = (
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
)


class NarsetServer:
    """One Narset process: `await start()` returns the bound port; `await stop()` is graceful and idempotent."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._store: Store | None = None
        self._events: EventHub | None = None
        self._health: health.aio.HealthServicer | None = None

    async def start(self) -> int:
        store = Store.open(self.settings.db_path, self.settings.sqlite_synchronous)
        with store.transaction():
            for blueprint in BUILTIN_BLUEPRINTS:
                store.put_blueprint(blueprint)
        events = EventHub(store)
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=[Guard()],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 4 * limit)],
        )
        ledger = CommandLedger(store, events)
        exchange = Exchange(store, events, DecisionEngine(store, ledger, events), TacticalPolicy(store, ledger, events))
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerService(exchange), server)
        operator_service_pb2_grpc.add_OperatorServiceServicer_to_server(OperatorService(store, ledger, events), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port(self.settings.address)
        if port == 0:
            store.close()
            raise OSError(f"could not listen on {self.settings.address}")
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._store, self._events, self._health, self.port = server, store, events, health_servicer, port
        host = self.settings.address.rpartition(":")[0]
        log.info("server.started", address=f"{host}:{port}", db_path=str(self.settings.db_path))
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, end watch streams, let in-flight RPCs finish, then close the store."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await self._health.enter_graceful_shutdown()
        self._events.close()
        await server.stop(self.settings.grace_s if grace is None else grace)
        self._store.close()
        log.info("server.stopped")

    async def __aenter__(self) -> NarsetServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: ServerSettings, ready_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully.

    With `ready_file`, the bound host:port is written there once the server listens (how a parent
    process learns the port it got for port 0).
    """
    server = NarsetServer(settings)
    port = await server.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    if ready_file is not None:
        partial = ready_file.with_name(ready_file.name + ".partial")
        partial.write_text(f"{settings.address.rpartition(':')[0]}:{port}\n")
        partial.replace(ready_file)
    try:
        await stop_requested.wait()
        log.info("server.stopping", reason="signal")
    finally:
        await server.stop()
