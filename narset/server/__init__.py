"""The Narset gRPC server: worker and operator services, health, reflection, graceful shutdown."""

from narset.server.app import NarsetServer, serve

__all__ = ["NarsetServer", "serve"]
