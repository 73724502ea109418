"""Shared helpers of the KServe REST routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from compat.kserve.errors import KServeError, invalid_input
from engines import EngineError


T = TypeVar("T")
# Runs a request's work and cancels it (aborting its generations) when the client goes away; the
# server supplies it (gateway.disconnect), so every face stops work for a departed client alike.
Guard = Callable[[Request, Awaitable[Any]], Awaitable[Any]]


async def unguarded(request: Request, work: Awaitable[T]) -> T:
    return await work


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)  # int keys become strings, as in KServe


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid_input(f"Unrecognized request format: {exc}") from None


class KServeRoute(APIRoute):
    """Every KServe REST route: errors leave in KServe's `{"error": ...}` envelope, the engine's
    through the one table in `errors.py`, refusals that may be retried with `Retry-After`."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def kserve_route(request: Request) -> Response:
            try:
                return await handler(request)
            except (KServeError, EngineError) as exc:
                err = exc if isinstance(exc, KServeError) else KServeError.from_engine(exc)
            return JSON(err.body(), status_code=err.status, headers=err.headers)

        return kserve_route
