"""One pure-ASGI middleware for what every HTTP request goes through, in this order:

1. request id: `x-request-id` on every response (the client's value when it sent one);
2. API key (when keys are configured), answered 401 in the face's envelope;
3. body size: a body over the limit is a 413 before the app reads it all;
4. deadline: `x-request-timeout` (seconds) or the server default, carried to the engine;
5. the request record: metrics and one access-log line when the response has ended;
6. the server's lifecycle: while it drains, new work is refused with 503 (probes still answer);
   a request it stops before its response began is answered 503 in its face's envelope.

Pure ASGI (no BaseHTTPMiddleware), so streaming and disconnect detection are untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import ApiKeys
from gateway.faces import Face, Faces
from gateway.lifecycle import SHUTDOWN_MESSAGE, Lifecycle
from gateway.observability import Metrics, RequestRecord, current_request, finish_record, safe_request_id

log = logging.getLogger("gateway")

REQUEST_ID_HEADER = b"x-request-id"
TIMEOUT_HEADER = b"x-request-timeout"
OPEN_PATHS = ("/", "/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready")


def request_id_of(scope: Scope) -> str:
    return scope.get("state", {}).get("request_id", "")


def is_playground_path(path: str) -> bool:
    """The playground's own files: a page anyone may load (its API calls carry the key)."""
    return path == "/playground" or path.startswith("/playground/")


@dataclass(frozen=True)
class HttpPolicy:
    keys: ApiKeys = ApiKeys(())
    protect_open_paths: bool = False  # also require the key on health, readiness and metrics
    max_body_bytes: int = 16 << 20
    default_timeout: float | None = None  # seconds; None: no deadline unless the client sends one
    log_format: str = "plain"
    access_log: bool = True


def error_response(face: Face, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A ready-made error in the face's own envelope."""
    raw = json.dumps(face.render(status, message, code)).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    out += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, raw, out


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, policy: HttpPolicy, metrics: Metrics, faces: Faces, lifecycle: Lifecycle | None = None) -> None:
        self.app = app
        self.policy = policy
        self.metrics = metrics
        self.faces = faces
        self.lifecycle = lifecycle or Lifecycle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = safe_request_id(headers.get(REQUEST_ID_HEADER)) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["lifecycle"] = lifecycle = self.lifecycle
        encoded = rid.encode("latin-1")
        path = scope["path"]
        face = self.faces.of(path)
        record = RequestRecord(request_id=rid, route=f"{scope['method']} {path}")
        task: asyncio.Task | None = None

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                lifecycle.answering(task)
                record.status = message["status"]
                out = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                out.append((REQUEST_ID_HEADER, encoded))
                message = {**message, "headers": out}
            await send(message)

        async def refuse(status: int, message: str, code: str, extra: dict[str, str] | None = None) -> None:
            status, body, out = error_response(face, status, message, code, extra)
            await send_with_id({"type": "http.response.start", "status": status, "headers": out})
            await send_with_id({"type": "http.response.body", "body": body})

        policy = self.policy
        try:
            # The playground's files are always open: a browser cannot send a key when it opens a
            # page, and they hold nothing secret (the page's API calls carry the key).
            protected = not is_playground_path(path) and (policy.protect_open_paths or path not in OPEN_PATHS)
            if policy.keys and protected and scope["method"] != "OPTIONS":
                if not policy.keys.allows(headers):
                    await refuse(401, "Missing or invalid API key: send it as `Authorization: Bearer <key>`.", "invalid_api_key",
                                 {"WWW-Authenticate": "Bearer"})
                    return
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > policy.max_body_bytes:
                await refuse(413, f"The request body is larger than {policy.max_body_bytes} bytes.", "request_too_large")
                return
            timeout = policy.default_timeout
            raw_timeout = headers.get(TIMEOUT_HEADER)
            if raw_timeout is not None:
                try:
                    timeout = float(raw_timeout)
                    if not math.isfinite(timeout) or timeout <= 0:
                        raise ValueError
                except ValueError:
                    await refuse(400, "x-request-timeout must be a positive number of seconds.", "invalid_value")
                    return
            if timeout is not None:
                record.deadline = record.started + timeout

            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # A body without a length (chunked) is read here, up to the limit, and replayed:
                # FastAPI would turn an error raised while it reads into a 400.
                body, more = b"", True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > policy.max_body_bytes:
                        await refuse(413, f"The request body is larger than {policy.max_body_bytes} bytes.", "request_too_large")
                        return
                replayed = False

                async def replay() -> Message:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                app_receive: Receive = replay
            else:
                app_receive = receive

            work = path not in OPEN_PATHS and not is_playground_path(path)
            if work and lifecycle.draining:
                await refuse(503, SHUTDOWN_MESSAGE, "service_unavailable", {"Retry-After": "1", "Connection": "close"})
                return
            token = current_request.set(record)
            task = lifecycle.enter() if work else None
            try:
                await self.app(scope, app_receive, send_with_id)
            except Exception:
                if record.status:  # the response had begun: the connection is all that can end
                    raise
                # Unexpected: logged with its traceback, answered in the face's envelope with the
                # request id, and counted and logged with its real status.
                log.exception("unhandled error on %s %s (request %s)", scope["method"], path, rid)
                record.error = "internal"
                await refuse(500, "The server had an error while processing your request.", "internal_error")
            except asyncio.CancelledError:
                if not lifecycle.was_stopped(task):
                    raise
                # The drain's grace period ended before this request could answer.
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                record.error = "shutdown"
                await refuse(503, SHUTDOWN_MESSAGE, "service_unavailable", {"Retry-After": "1", "Connection": "close"})
            finally:
                if work:
                    lifecycle.leave(task)
                current_request.reset(token)
        finally:
            if path not in ("/metrics", "/health", "/ready") and not is_playground_path(path):  # probes, scrapes and page files are not requests
                finish_record(record, self.metrics, face=face.name, log_format=policy.log_format if policy.access_log else None)
