"""The gRPC face's share of operations: API keys (`authorization: Bearer <key>` or `x-api-key`
metadata), and the same request record, deadline, metrics and access-log line as HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.auth import ApiKeys
from gateway.observability import Metrics, RequestRecord, current_request, finish_record

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


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary KServe method: request record (with the client's gRPC deadline as the
    request deadline), then metrics and one access-log line with the gRPC status."""

    def __init__(self, metrics: Metrics, *, log_format: str | None, default_timeout: float | None = None) -> None:
        self._metrics = metrics
        self._log_format = log_format
        self._default_timeout = default_timeout

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or handler.unary_unary is None or method.startswith(_OPEN_PREFIXES):
            return handler
        inner = handler.unary_unary
        metadata = {k.lower(): v for k, v in (details.invocation_metadata or ())}

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = str(metadata.get("x-request-id") or uuid.uuid4().hex)[:256]
            record = RequestRecord(request_id=rid, route=f"grpc {method}")
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None else self._default_timeout
            if timeout is not None:
                record.deadline = time.monotonic() + timeout
            token = current_request.set(record)
            try:
                response = await inner(request, context)
                record.status = "OK"
                return response
            except BaseException:
                code = context.code()
                record.status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                current_request.reset(token)
                finish_record(record, self._metrics, face="grpc", log_format=self._log_format)

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
