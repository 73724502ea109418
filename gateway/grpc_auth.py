"""API keys on the gRPC face: `authorization: Bearer <key>` or `x-api-key` metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.auth import ApiKeys

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: ApiKeys, *, protect_health: bool = False) -> None:
        self._keys = keys
        self._protect_health = protect_health

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if not self._protect_health and method.startswith(_OPEN_PREFIXES):
            return await continuation(details)
        metadata = {k.lower().encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in (details.invocation_metadata or ())}
        if self._keys.allows(metadata):
            return await continuation(details)
        handler = await continuation(details)
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Missing or invalid API key: send `authorization: Bearer <key>` metadata.")

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(request, context)
        yield  # pragma: no cover

    des = handler.request_deserializer if handler else None
    ser = handler.response_serializer if handler else None
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, request_deserializer=des, response_serializer=ser)
    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=des, response_serializer=ser)
