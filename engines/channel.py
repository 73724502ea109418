"""The hand-off of one request's deltas from an engine thread to the requester's event loop."""

from __future__ import annotations

import asyncio

from engines.types import GenerationDelta


class DeltaChannel:
    """Made on the requester's loop; `emit` may be called from any thread, `next` on that loop.

    An emitted exception is raised by `next`. `finished` turns true with the last delta (the one
    with a finish reason) or an exception: if it is still false when the requester stops reading,
    the requester went away and the engine request must be aborted."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()
        self.finished = False

    def emit(self, item: GenerationDelta | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the requester's loop is closed: nobody is listening any more
            pass

    async def next(self) -> GenerationDelta:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finish_reason is not None
        return item
