"""The gRPC face's share of operations: API keys (`authorization: Bearer <key>` or `x-api-key`
metadata), and the same request record, deadline, metrics, access-log line and shutdown
behaviour as HTTP. Requests are decoded here, so a malformed message is INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.auth import ApiKeys
from gateway.lifecycle import SHUTDOWN_MESSAGE, Lifecycle
from gateway.observability import Metrics, RequestRecord, current_request, finish_record, safe_request_id

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
_OPEN_PREFIXES = (HEALTH_PREFIX, REFLECTION_PREFIX)  # not requests: no record, no access line


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Every call needs a key, but health checks (unless `protect_health`) and server reflection
    when the operator opens it (`open_reflection`)."""

    def __init__(self, keys: ApiKeys, *, protect_health: bool = False, open_reflection: bool = False) -> None:
        self._keys = keys
        self._open = tuple(p for p, is_open in ((HEALTH_PREFIX, not protect_health), (REFLECTION_PREFIX, open_reflection)) if is_open)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if self._open and method.startswith(self._open):
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

    ser = handler.response_serializer if handler else None  # the request is never decoded: no key, no parsing
    if handler is not None and handler.request_streaming:
        async def refuse_stream_in(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse(None, context)
            yield  # pragma: no cover

        return grpc.stream_stream_rpc_method_handler(refuse_stream_in, response_serializer=ser)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, response_serializer=ser)
    return grpc.unary_unary_rpc_method_handler(refuse, response_serializer=ser)


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary KServe method: request record (with the client's gRPC deadline as the
    request deadline), then metrics and one access-log line with the gRPC status."""

    def __init__(
        self, metrics: Metrics, *, log_format: str | None, default_timeout: float | None = None, lifecycle: Lifecycle | None = None
    ) -> None:
        self._metrics = metrics
        self._log_format = log_format
        self._default_timeout = default_timeout
        self._lifecycle = lifecycle or Lifecycle()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or handler.unary_unary is None or method.startswith(_OPEN_PREFIXES):
            return handler
        inner = handler.unary_unary
        decode = handler.request_deserializer
        metadata = {k.lower(): v for k, v in (details.invocation_metadata or ())}
        lifecycle = self._lifecycle

        async def observed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            rid = safe_request_id(metadata.get("x-request-id")) or uuid.uuid4().hex
            record = RequestRecord(request_id=rid, route=f"grpc {method}")
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None else self._default_timeout
            if timeout is not None:
                record.deadline = time.monotonic() + timeout
            token = current_request.set(record)
            task = None
            try:
                if lifecycle.draining:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
                try:
                    request = decode(raw) if decode is not None else raw
                except DecodeError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"The request is not a valid protobuf message: {exc}")
                task = lifecycle.enter()
                try:
                    response = await inner(request, context)
                except asyncio.CancelledError:
                    if not lifecycle.was_stopped(task):
                        record.client_left = True  # the client cancelled or its deadline passed
                        raise
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    record.error = "shutdown"
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
                record.status = "OK"
                return response
            except BaseException:
                code = context.code()
                record.status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                if task is not None:
                    lifecycle.leave(task)
                current_request.reset(token)
                finish_record(record, self._metrics, face="grpc", log_format=self._log_format)

        # The request arrives as bytes and is decoded above: a malformed message is INVALID_ARGUMENT.
        return grpc.unary_unary_rpc_method_handler(observed, response_serializer=handler.response_serializer)
