"""The server process: its ports, its HTTP and gRPC servers on one event loop, and its shutdown.

- Ports are taken before the model loads (`bind_ports`): a busy or invalid port is one line
  naming the port and its flag, in seconds rather than after a model load.
- HTTP runs on uvicorn with the connection limits of `gateway.http_protocol`; gRPC beside it.
- The first SIGTERM (or Ctrl-C) drains (`gateway.lifecycle`): readiness turns 503 and new work is
  refused while the listeners stay open, requests in flight get `--shutdown_grace_period` seconds,
  what is left is stopped with a proper answer, then both servers and the engine stop and the
  process exits 0 (130 after Ctrl-C). A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.http_protocol import ConnectionLimits, guarded_protocol

log = logging.getLogger("gateway")


class PortError(RuntimeError):
    """A port that cannot be used; the message names it and its flag."""


@dataclass(frozen=True)
class Listen:
    host: str
    http_port: int
    grpc_port: int | None  # None: no gRPC face


def _addresses(host: str, port: int, flag: str) -> list[tuple[Any, ...]]:
    if not 0 < port < 65536:
        raise PortError(f"{port} ({flag}) is not a port number (1-65535).")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise PortError(f"cannot listen on --host {host!r}: {exc}.") from None
    seen, out = set(), []
    for family, kind, proto, _, address in infos:
        if (family, address) not in seen:
            seen.add((family, address))
            out.append((family, kind, proto, address))
    return out


def _bind(host: str, port: int, flag: str) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in _addresses(host, port, flag):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise PortError(_describe(exc, host, port, flag)) from None
    return sockets


def _describe(exc: OSError, host: str, port: int, flag: str) -> str:
    where = f"port {port} ({flag}) on {host or 'all addresses'}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use: stop what listens there or choose another {flag}."
    if exc.errno == errno.EACCES:
        return f"{where} needs privileges this process does not have (ports below 1024 usually need root)."
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} (--host) is not an address of this machine."
    return f"cannot listen on {where}: {exc.strerror or exc}."


def bind_ports(listen: Listen) -> list[socket.socket]:
    """Bind the HTTP port (kept, handed to uvicorn) and check the gRPC port (bound again when
    gRPC starts). Raises PortError with one line naming the port and its flag."""
    if listen.grpc_port is not None and listen.grpc_port == listen.http_port:
        raise PortError(f"--http_port and --grpc_port are both {listen.http_port}: give gRPC a port of its own.")
    http = _bind(listen.host, listen.http_port, "--http_port")
    if listen.grpc_port is not None:
        try:
            for probe in _bind(listen.host, listen.grpc_port, "--grpc_port"):
                probe.close()
        except PortError:
            for sock in http:
                sock.close()
            raise
    return http


class GatewayServer:
    """HTTP (uvicorn, on the sockets bound beforehand) and gRPC on one loop, drained on SIGTERM."""

    def __init__(self, app: FastAPI, sockets: list[socket.socket], *, listen: Listen, grace_period: float,
                 timeout_keep_alive: int, log_level: str, limits: ConnectionLimits, executor_threads: int | None = None) -> None:
        self.app = app
        self.sockets = sockets
        self.listen = listen
        self.grace_period = grace_period
        self.executor_threads = executor_threads
        self.config = uvicorn.Config(
            app, host=listen.host, port=listen.http_port, log_level=log_level, timeout_keep_alive=timeout_keep_alive,
            timeout_graceful_shutdown=5,  # a backstop: the drain has already answered what was running
            access_log=False,  # our own one line per request (gateway.access) replaces uvicorn's
            http=guarded_protocol(limits),
        )
        self.server = _Uvicorn(self.config, self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None
        self._grpc: Any = None
        self.signal: int | None = None

    def run(self) -> int:
        """Serve until a signal; the exit status (0 after SIGTERM, 130 after Ctrl-C)."""
        with asyncio.Runner(loop_factory=self.config.get_loop_factory()) as runner:
            runner.run(self._main())
        return 128 + signal.SIGINT if self.signal == signal.SIGINT else 0

    async def _main(self) -> None:
        from gateway.server import StartupError, build_grpc_server

        self._loop = asyncio.get_running_loop()
        if self.executor_threads:  # tokenization's threads, sized for the CPUs this process has
            self._loop.set_default_executor(ThreadPoolExecutor(self.executor_threads, thread_name_prefix="gateway"))
        engine = self.app.state.engine
        await engine.start()
        try:
            if self.listen.grpc_port is not None:
                self._grpc = build_grpc_server(self.app)
                address = f"{self.listen.host}:{self.listen.grpc_port}"
                try:
                    bound = self._grpc.add_insecure_port(address)
                except RuntimeError:
                    bound = 0
                if not bound:
                    self._grpc = None
                    raise StartupError(f"port {self.listen.grpc_port} (--grpc_port) on {self.listen.host} is already in use.")
                await self._grpc.start()
                from compat.kserve.grpc.servicer import mark_serving

                await mark_serving(self._grpc, True)
                log.info("gRPC (KServe v2) on %s", address)
            await self.server.serve(sockets=self.sockets)
        finally:
            if self._grpc is not None:
                await self._grpc.stop(grace=1)
            await engine.stop()

    # -- signals --------------------------------------------------------------------------------

    def on_signal(self, sig: int) -> None:
        """From the signal handler: the first signal drains, a second one stops at once."""
        if self._drain is not None or self.server.should_exit:
            self.server.force_exit = True
            self.server.should_exit = True
            return
        self.signal = sig
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            if self._grpc is not None:
                from compat.kserve.grpc.servicer import mark_serving

                await mark_serving(self._grpc, False)
            await self.app.state.lifecycle.drain(self.grace_period)
        finally:
            self.server.should_exit = True


class _Uvicorn(uvicorn.Server):
    """uvicorn, whose signals go to the drain instead of closing the listeners at once."""

    def __init__(self, config: uvicorn.Config, owner: GatewayServer) -> None:
        super().__init__(config)
        self._owner = owner

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._owner.on_signal(sig)
