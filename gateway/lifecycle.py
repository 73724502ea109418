"""Where the server is in its life, for every face: serving, draining, or stopping what is left.

On SIGTERM the server drains (Kubernetes' shutdown): readiness turns 503, new work is refused
with 503 (HTTP) or UNAVAILABLE (gRPC) while the listeners stay open, and requests in flight get
the grace period to finish. What is still running when it ends is *stopped*, not cut: a request
that has not started its response is answered 503 in its face's envelope (gRPC: UNAVAILABLE),
and a stream gets an in-band error event and its terminator. Then the process exits.

Requests announce themselves (`enter`/`leave`); `answering` marks one whose response has begun
(a stream), which `stop` leaves to its own handler (it awaits `watch()`). One app may serve on
more than one event loop (tests do), so nothing here is bound to a loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from engines import EngineError, ErrorCode

log = logging.getLogger("gateway")

SHUTDOWN_MESSAGE = "The server is shutting down; retry on another replica."


def shutdown_error() -> EngineError:
    return EngineError(ErrorCode.UNAVAILABLE, SHUTDOWN_MESSAGE)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.stopping = False
        self.in_flight = 0
        self._unanswered: set[asyncio.Task] = set()
        self._stopped: set[asyncio.Task] = set()
        self._watchers: set[asyncio.Future] = set()

    def watch(self) -> asyncio.Future:
        """A future on the running loop that completes when what is still running must end."""
        future = asyncio.get_running_loop().create_future()
        if self.stopping:
            future.set_result(None)
        else:
            self._watchers.add(future)
            future.add_done_callback(self._watchers.discard)
        return future

    # -- requests -----------------------------------------------------------------------------

    def enter(self) -> asyncio.Task | None:
        task = asyncio.current_task()
        self.in_flight += 1
        if task is not None:
            self._unanswered.add(task)
        return task

    def answering(self, task: asyncio.Task | None) -> None:
        self._unanswered.discard(task)  # type: ignore[arg-type]

    def leave(self, task: asyncio.Task | None) -> None:
        self.in_flight -= 1
        self._unanswered.discard(task)  # type: ignore[arg-type]
        self._stopped.discard(task)  # type: ignore[arg-type]

    def was_stopped(self, task: asyncio.Task | None) -> bool:
        """This request's task was cancelled by `stop` (not by its client, nor by anyone else)."""
        return task in self._stopped

    # -- the drain ----------------------------------------------------------------------------

    def stop(self) -> None:
        """End everything still running: streams' watchers complete, the rest are cancelled."""
        self.stopping = True
        for future in list(self._watchers):
            future.get_loop().call_soon_threadsafe(_resolve, future)
        for task in list(self._unanswered):
            self._stopped.add(task)
            task.get_loop().call_soon_threadsafe(task.cancel)

    async def drain(self, grace_period: float, *, settle: float = 5.0) -> None:
        """Refuse new work, give the requests in flight `grace_period` seconds, then stop the rest
        and wait up to `settle` seconds for their answers to go out."""
        self.draining = True
        log.info("Draining: %d request(s) in flight, %.0f s to finish", self.in_flight, grace_period)
        if not await self._idle_within(grace_period):
            log.warning("Stopping %d request(s) still running after the grace period", self.in_flight)
            self.stop()
            await self._idle_within(settle)

    async def _idle_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
