"""Chat templates rendered in worker processes, with a time, memory and output bound.

A chat template is Jinja code that runs on client-controlled messages, and with
`--trust_request_chat_template` it is the client's own code. Inside one process nothing can stop
a Jinja loop of 10^10 steps or a single 10 GB string, and a render on a thread holds the GIL that
the event loop and the tokenizer threads need. So templates render in small worker processes
(`python -m engines.template_worker`: the standard library and jinja2, ~25 MB each):

- time: the worker interrupts its own render after `timeout_s` (an alarm), and the pool kills and
  replaces a worker that does not answer one second later;
- memory: the worker's address space is capped (`memory_mb` above what it needs to start), so an
  allocation past it is a MemoryError inside the render, not a dead server;
- output: the render stops once the prompt grows past `max_output` characters;
- place: requests wait for a worker on the pool's own threads, never on the default executor that
  tokenization uses, so slow templates cannot starve other requests' tokenization.

Every failure is an `EngineError` (INVALID_REQUEST, reason `template_error`): a 400 that names the
template or the messages. Workers exit when the server does (their stdin closes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from engines.errors import EngineError, ErrorCode

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class TemplateLimits:
    timeout_s: float = 5.0  # wall-clock seconds one render may take
    memory_mb: int = 512  # address space a worker may use beyond what it starts with
    workers: int = 2  # renders at once
    min_output: int = 1 << 20  # characters a prompt may always grow to ...
    output_per_input: int = 4  # ... plus this many per character of input (messages, tools, arguments)


# -- framing --------------------------------------------------------------------------------------


def _write_frame(stream: BinaryIO, value: Any) -> None:
    data = json.dumps(value).encode()  # ASCII: lone surrogates travel as escapes
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(stream: BinaryIO) -> Any:
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(stream, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


# -- the worker process ---------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by the alarm inside a render (a BaseException, so no template-level handler eats it)."""


def serve_worker() -> None:
    """The worker process's main loop: one init frame, then render requests until stdin closes."""
    import resource

    from engines.chat_template import Renderer, describe

    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the reply stream
    requests = sys.stdin.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop (stdin closes)
    init = _read_frame(requests)
    if init is None:
        return
    if init.get("memory_bytes"):
        with open("/proc/self/status") as f:
            size_kb = next((int(line.split()[1]) for line in f if line.startswith("VmSize:")), 0)
        limit = size_kb * 1024 + int(init["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    renderer = Renderer(init.get("default_template"), init.get("special_tokens") or {})
    rendering = False

    def alarm(signum: int, frame: Any) -> None:
        if rendering:
            raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    while True:
        request = _read_frame(requests)
        if request is None:
            return
        timeout = float(request.pop("timeout"))
        try:
            rendering = True
            signal.setitimer(signal.ITIMER_REAL, timeout)
            text = renderer.render(**request)
            rendering = False
            reply: dict[str, Any] = {"text": text}
        except _Timeout:
            reply = {"error": f"the chat template did not finish within {timeout:g} s"}
        except Exception as exc:  # the template's failure, reported to the client
            rendering = False
            reply = {"error": describe(exc)}
        finally:
            rendering = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        _write_frame(replies, reply)


# -- the pool -------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, init: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engines.template_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        _write_frame(self._in, init)

    def call(self, request: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """The worker's reply, or None when it did not answer in time or died (then it is gone)."""
        try:
            _write_frame(self._in, request)
        except OSError:
            return None
        deadline = time.monotonic() + wait_s
        fd = self._out.fileno()
        header = b""
        body: bytes | None = None
        size = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            if size is None:
                header += chunk
                if len(header) < _HEADER.size:
                    continue
                size = _HEADER.unpack(header[: _HEADER.size])[0]
                body = header[_HEADER.size :]
            else:
                body = (body or b"") + chunk
            if body is not None and len(body) >= size:
                return json.loads(body[:size])

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for stream in (self._in, self._out):
            try:
                stream.close()
            except OSError:
                pass


def _stop_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class TemplatePool:
    """Renders chat templates on a few worker processes. Thread-safe; `render` blocks, `render_async`
    waits on the pool's own threads."""

    def __init__(self, default_template: str | None, special_tokens: dict[str, Any], limits: TemplateLimits = TemplateLimits()) -> None:
        self._init = {"default_template": default_template, "special_tokens": special_tokens, "memory_bytes": limits.memory_mb << 20}
        self.limits = limits
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max(1, limits.workers), thread_name_prefix="chat-template")
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_all, self._all)

    def warm(self) -> None:
        """Start one worker now (its interpreter starts in the background)."""
        with self._lock:
            if not self._all and not self._closed:
                worker = _Worker(self._init)
                self._all.append(worker)
                self._idle.put(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._finalizer()

    def _acquire(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise EngineError(ErrorCode.UNAVAILABLE, "The server is shutting down.")
            if len(self._all) < max(1, self.limits.workers):
                worker = _Worker(self._init)
                self._all.append(worker)
                return worker
        return self._idle.get()

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker that did not answer and put a fresh one in its place (others may be waiting)."""
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            if self._closed:
                return
            fresh = _Worker(self._init)
            self._all.append(fresh)
        self._idle.put(fresh)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        template: str | None = None,
        tools: list[Any] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        request = {
            "messages": messages, "template": template, "tools": tools, "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message, "kwargs": kwargs or {}, "timeout": self.limits.timeout_s,
        }
        encoded_size = len(json.dumps(request))
        request["max_output"] = self.limits.min_output + self.limits.output_per_input * encoded_size
        param = "chat_template" if template is not None else "messages"
        worker = self._acquire()
        # The worker stops its own render at the timeout; one more second for it to say so.
        reply = worker.call(request, self.limits.timeout_s + 1.0)
        if reply is None:
            self._replace(worker)
            raise _failure(f"the chat template did not finish within {self.limits.timeout_s:g} s or used too much memory", param)
        self._idle.put(worker)
        if "error" in reply:
            raise _failure(reply["error"], param)
        return reply["text"]

    async def render_async(self, messages: list[dict[str, Any]], **options: Any) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(self.render, messages, **options))


def _failure(detail: str, param: str) -> EngineError:
    return EngineError(
        ErrorCode.INVALID_REQUEST, f"The chat template could not render these messages: {detail}", param=param, reason="template_error",
    )
