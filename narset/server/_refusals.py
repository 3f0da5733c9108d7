"""Turns a `Refusal` raised by Narset's logic into the gRPC status it carries."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import structlog

from narset.control.errors import Refusal

__all__ = ["refusals_as_status"]

log = structlog.get_logger("narset.server")
Response = TypeVar("Response")


def refusals_as_status(
    method: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except Refusal as refusal:
            log.info("request.refused", rpc=method.__name__, code=refusal.code.name, message=str(refusal))
            await context.abort(refusal.code, str(refusal))
            raise AssertionError("unreachable: abort raises") from refusal

    return wrapper
