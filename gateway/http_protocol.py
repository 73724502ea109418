"""uvicorn's httptools protocol with the limits a server facing untrusted clients needs.

uvicorn bounds only idle keep-alive connections. A client that opens a connection and sends its
headers a byte at a time (slowloris), announces a body it never sends, or sends a megabyte of
headers is held for as long as it likes. Here, per request:

- the request line and headers must arrive within `header_timeout` seconds (counted from the
  connection's opening, or from the first byte of a request on a kept-alive connection): else 408;
- the body within `body_timeout` seconds after the headers: else 408 and the request is ended
  (the application sees a disconnect);
- the request line and headers may hold at most `max_header_bytes` bytes: else 431.

Each refusal closes the connection.
"""

from __future__ import annotations

from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 15.0
    body_timeout: float = 60.0
    max_header_bytes: int = 32 << 10


class _HeadersTooLarge(Exception):
    pass


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`http=`), with these limits."""

    class GuardedHttpToolsProtocol(_Guarded):
        pass

    GuardedHttpToolsProtocol.limits = limits
    return GuardedHttpToolsProtocol


class _Guarded(HttpToolsProtocol):
    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._header_bytes = 0
        self._too_large = False

    # -- timers -------------------------------------------------------------------------------

    def _cancel(self, timer: TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_timed_out)

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        head = b"".join([
            STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n",
        ])
        self.transport.write(head + body)
        self.transport.close()

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a pipelined request waits for the response before it: its clock starts after
            return
        self._refuse(408, f"The request headers did not arrive within {self.limits.header_timeout:g} s.")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or cycle.response_complete:
            return
        if not cycle.response_started:
            self._refuse(408, f"The request body did not arrive within {self.limits.body_timeout:g} s.")
        else:
            self.transport.close()
        cycle.disconnected = True  # the application's receive() now answers http.disconnect
        cycle.message_event.set()

    # -- protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        self._header_timer = self._body_timer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, f"The request line and headers are larger than {self.limits.max_header_bytes} bytes.")
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm_header_timer()

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            self._too_large = True
            raise _HeadersTooLarge  # the parser stops; send_400_response answers 431

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel(self._header_timer)
        self._header_timer = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()
