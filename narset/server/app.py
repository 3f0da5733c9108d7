"""Assembles and runs the Narset server: store, services, health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.contract.limits import message_size_options
from narset.control.decisions import DecisionEngine
from narset.control.events import EventHub
from narset.control.exchange import Exchange
from narset.control.ledger import CommandLedger
from narset.control.tactical import TacticalPolicy
from narset.server.guard import Guard
from narset.server.identity import Authority
from narset.server.metrics import Metrics, MetricsEndpoint, StoreCollector
from narset.server.operator_service import OperatorService
from narset.server.reflection import enable_reflection
from narset.server.settings import ServerSettings, exposure_error
from narset.server.worker_service import WorkerService
from narset.store import Store, open_store
from narset.v1 import (
    operator_service_pb2,
    operator_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

__all__ = ["InsecureBindError", "NarsetServer", "serve"]

log = structlog.get_logger("narset.server")

SERVICE_NAMES = (
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    operator_service_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
)


class InsecureBindError(RuntimeError):
    """The settings would expose Narset unprotected beyond loopback; the message says what is missing."""


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials of the settings (mutual TLS with a client CA); None to listen in plain text."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
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
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_port: int | None = None

    async def start(self) -> int:
        exposed = exposure_error(self.settings)
        if exposed is not None:
            raise InsecureBindError(exposed)
        credentials = _credentials(self.settings)
        store = open_store(
            self.settings.db_path, self.settings.sqlite_synchronous, self.settings.postgres_lock_timeout_s
        )
        with store.transaction():
            for blueprint in sorted(BUILTIN_BLUEPRINTS, key=lambda b: b.name):  # the store's one lock order
                store.put_blueprint(blueprint)
        events = EventHub(store)
        metrics = Metrics()
        store.on_commit = metrics.store_commit_seconds.observe
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=[
                Guard(Authority(self.settings.tokens, self.settings.client_certificates), store, metrics, limit)
            ],
            options=message_size_options(limit),
        )
        ledger = CommandLedger(store, events)
        exchange = Exchange(
            store, events, DecisionEngine(store, ledger, events), TacticalPolicy(store, ledger, events), limit
        )
        worker_service = WorkerService(exchange, self.settings.stale_session_s, metrics)
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(worker_service, server)
        operator_service_pb2_grpc.add_OperatorServiceServicer_to_server(
            OperatorService(store, ledger, events, limit), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
        if credentials is None:
            port = server.add_insecure_port(self.settings.address)
        else:
            port = server.add_secure_port(self.settings.address, credentials)
        if port == 0:
            store.close()
            raise OSError(f"could not listen on {self.settings.address}")
        try:
            self._metrics_endpoint = self._serve_metrics(metrics, store)
        except OSError:
            store.close()
            raise
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server, self._store, self._events, self._health, self.port = server, store, events, health_servicer, port
        host = self.settings.address.rpartition(":")[0]
        log.info(
            "server.started",
            address=f"{host}:{port}",
            store=store.shown,
            tls="mutual" if self.settings.tls_client_ca else ("on" if credentials else "off"),
            tokens=len(self.settings.tokens),
        )
        return port

    def _serve_metrics(self, metrics: Metrics, store: Store) -> MetricsEndpoint | None:
        """The /metrics endpoint with the store's counts, if the settings ask for one."""
        if self.settings.metrics_address is None:
            return None
        if store.path == ":memory:":  # no other connection can see it
            log.warning("metrics.no_store_counts", reason="an in-memory store")
        else:
            metrics.registry.register(StoreCollector(store.path, self.settings.metrics_job_labels))
        endpoint = MetricsEndpoint(self.settings.metrics_address, metrics.registry)
        self.metrics_port = endpoint.port
        return endpoint

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, end watch streams, let in-flight RPCs finish, then close the store."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await self._health.enter_graceful_shutdown()
        self._events.close()
        await server.stop(self.settings.grace_s if grace is None else grace)
        if self._metrics_endpoint is not None:
            # Off the event loop: closing waits for a scrape in progress.
            await asyncio.to_thread(self._metrics_endpoint.close)
            self._metrics_endpoint = None
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
