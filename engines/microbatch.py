"""Micro-batching for encoder work: concurrent requests share forward passes, grouped by length
so padding stays small, each pass run off the event loop.

By default nobody waits for a batch to fill: an idle encoder runs a request at once, and requests
that arrive while a pass runs form the next one (batches grow exactly as fast as load does). An
operator may add a gathering window (`wait_s`) before each pass instead."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from engines.errors import EngineError, ErrorCode

T = TypeVar("T")


def length_groups(lengths: Sequence[int], *, max_size: int, slack: float = 1.25, extra: int = 8) -> list[list[int]]:
    """Indices grouped by similar length: within a group the longest is at most
    `slack` x the shortest + `extra` tokens, and no group exceeds `max_size`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            group = groups[-1]
            if len(group) < max_size and lengths[i] <= slack * lengths[group[0]] + extra:
                group.append(i)
                continue
        groups.append([i])
    return groups


def _as_list(item: Sequence[int]) -> list[int]:
    """An input as a list, kept as it is when it already is one (it may carry attributes)."""
    return item if isinstance(item, list) else list(item)


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[list[list[int]]], list[T]],
        executor: Callable[[], Executor | None],
        *,
        wait_s: float = 0.0,
        max_batch: int = 64,
        max_waiting: int = 4096,
    ) -> None:
        self._run = run
        self._executor = executor
        self.wait_s = wait_s
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._pending: list[tuple[list[int], asyncio.Future[T]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.batches_total = 0
        self.items_total = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def submit(self, inputs: Sequence[Sequence[int]]) -> list[T]:
        loop = asyncio.get_running_loop()
        if len(self._pending) + len(inputs) > self.max_waiting:
            raise EngineError(ErrorCode.OVERLOADED, "Too many inputs are waiting for the encoder; retry shortly.")
        futures = [loop.create_future() for _ in inputs]
        self._pending += [(_as_list(x), f) for x, f in zip(inputs, futures)]
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self.wait_s > 0 and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.wait_s)  # the operator's gathering window
            else:
                await asyncio.sleep(0)  # requests submitted in the same turn of the loop join
            taken, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            live = [(ids, f) for ids, f in taken if not f.done()]  # skip requests that went away
            if not live:
                continue
            try:
                results = await self._run_groups(loop, [ids for ids, _ in live])
            except Exception as exc:
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), result in zip(live, results):
                if not f.done():
                    f.set_result(result)

    async def _run_groups(self, loop: asyncio.AbstractEventLoop, items: list[list[int]]) -> list[T]:
        executor = self._executor()
        if executor is None:
            raise EngineError(ErrorCode.UNAVAILABLE, "The engine is not running.")
        out: list[T | None] = [None] * len(items)
        for group in length_groups([len(x) for x in items], max_size=self.max_batch):
            results = await loop.run_in_executor(executor, self._run, [items[i] for i in group])
            for i, result in zip(group, results):
                out[i] = result
            self.batches_total += 1
        self.items_total += len(items)
        return out  # type: ignore[return-value]
