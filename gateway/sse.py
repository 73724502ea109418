"""The only SSE framer: `data: <json>\\n\\n` events, `: ping` comments, `data: [DONE]`.

- The first event is awaited *before* the response starts, so validation and engine errors that
  happen before any output get a real HTTP status instead of a 200 with an in-band error.
- An error after the headers went out becomes one in-band `data: {"error": ...}` event, then
  `[DONE]`.
- A client disconnect cancels the producer, which closes the event iterator (and so aborts the
  engine request) right away, not at the next token.
- When the server stops what outlived its shutdown grace period, the stream gets an in-band
  error event and `[DONE]`, not a cut connection.
It knows nothing about chat or completions: events are JSON-serialisable values.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.disconnect import cancel_on_disconnect
from gateway.lifecycle import shutdown_error
from gateway.observability import current_request

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
_END = object()

ErrorBody = Callable[[BaseException], Any]


def encode_event(event: Any) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


async def event_stream(
    request: Request,
    events: AsyncIterator[Any],
    *,
    error_body: ErrorBody,
    headers: Mapping[str, str] | None = None,
    ping_interval: float = 15.0,
) -> SSEResponse:
    """Await the first event (raising its errors normally), then return the streaming response."""
    iterator = aiter(events)
    try:
        first = await cancel_on_disconnect(request, anext(iterator))
    except StopAsyncIteration:
        first = _END
    return SSEResponse(first, iterator, error_body=error_body, headers=headers, ping_interval=ping_interval)


class SSEResponse(Response):
    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        first: Any,
        rest: AsyncIterator[Any],
        *,
        error_body: ErrorBody,
        headers: Mapping[str, str] | None,
        ping_interval: float,
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})},
            media_type=self.media_type,
        )
        self._first = first
        self._rest = rest
        self._error_body = error_body
        self._ping = ping_interval

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k, v) for k, v in self.raw_headers if k != b"content-length"],
            }
        )
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        lifecycle = scope.get("state", {}).get("lifecycle")
        stop = lifecycle.watch() if lifecycle is not None else None
        tasks = [t for t in (pump, watcher, stop) if t is not None]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and not pump.done():  # the client left mid-stream
                record = current_request.get()
                if record is not None:
                    record.client_left = True
            if stop in done and not pump.done():
                record = current_request.get()
                if record is not None:
                    record.error = "shutdown"
                pump.cancel()  # closes the events, which aborts the generation
                await asyncio.gather(pump, return_exceptions=True)
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": encode_event(self._error_body(shutdown_error())) + DONE, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self, send: Send) -> None:
        async def body(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        pending: asyncio.Future[Any] | None = None
        try:
            if self._first is not _END:
                await body(encode_event(self._first))
                while True:
                    pending = asyncio.ensure_future(anext(self._rest))
                    while not (await asyncio.wait({pending}, timeout=self._ping))[0]:
                        await body(PING)
                    done, pending = pending, None
                    try:
                        event = done.result()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # after the headers: report in-band, then end
                        await body(encode_event(self._error_body(exc)))
                        break
                    await body(encode_event(event))
            await body(DONE)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-send
            pass
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._rest.aclose()  # type: ignore[attr-defined]


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
