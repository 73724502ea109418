"""What chat and completions share: config, model lookup, ids, choices, request logs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines import Engine, EngineError, GenerationDelta, GenerationParams, RequestContext
from engines.frontend import Admission, run_parts
from engines.tasks import Task
from engines.types import TokenLogprob
from gateway.openai.errors import OpenAIError, invalid, model_not_found
from gateway.openai.config import OpenAIConfig
from gateway.usage import UsageTracker

log = logging.getLogger("gateway.requests")

SERVER_VERSION = "0.1.0"


class ServiceBase:
    def __init__(self, engine: Engine, config: OpenAIConfig) -> None:
        self.engine = engine
        self.config = config
        caps = engine.capabilities
        digest = hashlib.sha256(f"{caps.root}|{caps.engine}|{caps.dtype}|{SERVER_VERSION}".encode()).hexdigest()
        self.fingerprint = f"fp_{digest[:10]}"

    def resolve_model(self, requested: str | None) -> str:
        """The name to echo in responses; unknown names are a 404 naming `model`."""
        if requested is None or requested == self.config.served_name:
            return self.config.served_name
        if requested in self.adapters:
            return requested
        raise model_not_found(requested, (self.config.served_name, *self.adapters))

    @property
    def adapters(self) -> tuple[str, ...]:
        """LoRA adapters served beside the base model (vLLM engine), addressed by name in `model`."""
        return tuple(self.engine.capabilities.extra.get("adapters", ()))  # type: ignore[arg-type]

    def with_adapter(self, params: GenerationParams, model: str) -> GenerationParams:
        return params if model == self.config.served_name else dataclasses.replace(params, adapter=model)

    def require_task(self, task: Task) -> None:
        """A request the served model cannot answer at all is the client's mistake: 400."""
        caps = self.engine.capabilities
        if task in caps.tasks or (task is Task.text_generation and Task.text2text_generation in caps.tasks):
            return
        served = ", ".join(sorted(t.value for t in caps.tasks))
        if task is Task.text_generation and Task.text_embedding in caps.tasks:
            message = f"The model `{caps.model_name}` is an embedding model: it serves /embeddings, not text generation."
        elif task is Task.text_generation:
            message = f"The model `{caps.model_name}` serves {served}, not text generation."
        elif Task.text_generation in caps.tasks:
            message = f"The model `{caps.model_name}` generates text: it does not serve embeddings."
        else:
            message = f"The model `{caps.model_name}` serves {served}, not embeddings."
        raise OpenAIError(400, message, code="unsupported_model", param="model")

    def check_n(self, n: int | None, param: str = "n") -> int:
        n = 1 if n is None else n
        if not 1 <= n <= self.config.max_n:
            raise invalid(f"`{param}` must be between 1 and {self.config.max_n}, got {n}.", param)
        return n

    def check_token_ids(self, prompts: Sequence[Sequence[int]], param: str) -> None:
        """Token-id prompts must name real tokens before anything decodes them."""
        vocab = self.engine.capabilities.vocab_size
        bad = next((t for p in prompts for t in p if not 0 <= t < vocab), None)
        if bad is not None:
            raise invalid(f"Token id {bad} is out of vocabulary (the vocabulary has {vocab} tokens).", param, code="invalid_token_id")

    async def admit(self, prompts: Sequence[Sequence[int]], params: GenerationParams, choices: int, *,
                    prompt_param: str = "prompt", rename: Mapping[str, str] | None = None) -> Admission:
        """The whole request through the engine's admission: the operator's limits, the model's
        limits and a slot for every choice of every prompt, or an error with nothing started."""
        try:
            return await self.engine.admit(prompts, params, choices, prompt_param=prompt_param)
        except EngineError as exc:
            raise OpenAIError.from_engine(exc, rename=rename) from None

    def check_logprobs(self, k: int | None, param: str) -> int | None:
        if k is not None and not 0 <= k <= self.config.max_logprobs:
            raise invalid(f"`{param}` must be between 0 and {self.config.max_logprobs}, got {k}.", param)
        return k

    def truncate(self, ids: list[int], keep: int | None) -> list[int]:
        """`truncate_prompt_tokens`: keep the last `keep` tokens (-1: as many as the model takes)."""
        if keep is None:
            return ids
        if keep == -1:
            keep = self.engine.capabilities.max_model_len
        if keep < 1:
            raise invalid("`truncate_prompt_tokens` must be -1 or at least 1.", "truncate_prompt_tokens")
        return ids[-keep:]

    def log_request(self, request_id: str, prompt: str | Sequence[int], params: GenerationParams) -> None:
        if not self.config.log_requests or not log.isEnabledFor(logging.INFO):
            return
        shown: Any = prompt
        limit = self.config.max_log_len
        if limit is not None:
            shown = prompt[:limit]
        log.info("Received request %s: prompt: %r, params: %s", request_id, shown, params)


def text_or_token_lists(raw: Any, param: str, *, limit: int | None = None) -> list[str | list[int]]:
    """The four input forms (a string, strings, token ids, lists of token ids) as a list."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif raw and all(isinstance(t, int) for t in raw):
        items = [raw]
    else:
        items = list(raw)
    if not items or any(len(i) == 0 for i in items):
        raise invalid(f"`{param}` must not be empty, and neither may any element of it.", param)
    if limit is not None and len(items) > limit:
        raise invalid(f"At most {limit} inputs per request, got {len(items)}.", param)
    return items


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def seeded(params: GenerationParams, sample: int) -> GenerationParams:
    """Choice `sample` of a seeded request uses seed + sample: distinct, and repeatable."""
    if params.seed is None or sample == 0:
        return params
    return dataclasses.replace(params, seed=params.seed + sample)


@dataclass
class Generation:
    """One choice being generated: engine deltas with errors already in the OpenAI envelope."""

    engine: Engine
    prompt: Sequence[int]
    params: GenerationParams
    request_id: str
    index: int = 0  # choice index in the response
    prompt_index: int = 0
    rename: Mapping[str, str] = field(default_factory=dict)  # neutral field name -> request's name
    admission: Admission | None = None  # the request's slots (every choice of a request shares one)

    async def deltas(self) -> AsyncIterator[GenerationDelta]:
        stream = self.engine.generate(self.prompt, self.params, RequestContext(self.request_id, admission=self.admission))
        try:
            async for delta in stream:
                yield delta
        except EngineError as exc:
            raise OpenAIError.from_engine(exc, rename=self.rename) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


def _close_admission(generations: Sequence[Generation]) -> None:
    """The request is over: slots its choices did not give back (they never ran) are freed."""
    for admission in {id(g.admission): g.admission for g in generations if g.admission is not None}.values():
        admission.close()


async def merged(generations: Sequence[Generation]) -> AsyncIterator[tuple[Generation, GenerationDelta]]:
    """Deltas of several choices as they come. Closing it aborts every choice still running."""
    try:
        async for item in _merged(generations):
            yield item
    finally:
        _close_admission(generations)


async def _merged(generations: Sequence[Generation]) -> AsyncIterator[tuple[Generation, GenerationDelta]]:
    if len(generations) == 1:
        async for delta in generations[0].deltas():
            yield generations[0], delta
        return
    queue: asyncio.Queue[tuple[Generation, GenerationDelta | BaseException | None]] = asyncio.Queue()

    async def pump(gen: Generation) -> None:
        try:
            async for delta in gen.deltas():
                queue.put_nowait((gen, delta))
        except Exception as exc:
            queue.put_nowait((gen, exc))
        finally:
            queue.put_nowait((gen, None))

    tasks = [asyncio.ensure_future(pump(g)) for g in generations]
    remaining = len(tasks)
    try:
        while remaining:
            gen, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield gen, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Collected:
    generation: Generation
    text: str
    finish_reason: str | None
    stop_reason: str | int | None
    completion_tokens: int
    prompt_tokens: int
    logprobs: list[TokenLogprob]
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None

    @property
    def mean_logprob(self) -> float:
        return sum(i.logprob for i in self.logprobs) / max(len(self.logprobs), 1)


async def collect_one(gen: Generation) -> Collected:
    parts: list[str] = []
    items: list[TokenLogprob] = []
    prompt_logprobs = None
    last: GenerationDelta | None = None
    async for delta in gen.deltas():
        parts.append(delta.text)
        items.extend(delta.logprobs)
        if delta.prompt_logprobs is not None:
            prompt_logprobs = delta.prompt_logprobs
        last = delta
    assert last is not None, "the engine ended a generation without a final delta"
    return Collected(
        gen, "".join(parts), last.finish_reason, last.stop_reason, last.completion_tokens, last.prompt_tokens,
        items, prompt_logprobs,
    )


async def collect_all(generations: Sequence[Generation]) -> list[Collected]:
    """Run every choice concurrently; if one fails, the others are aborted."""
    try:
        return await run_parts([collect_one(g) for g in generations])
    finally:
        _close_admission(generations)


@dataclass
class Prepared:
    """A validated request, ready to generate: ids, names, choices and its stream usage rules."""

    id: str
    chunk_object: str  # "chat.completion.chunk" or "text_completion"
    created: int
    model: str
    fingerprint: str
    generations: list[Generation]
    include_usage: bool = False
    continuous_usage: bool = False
    usage: UsageTracker = field(default_factory=UsageTracker)

    def chunk(self, choice: dict[str, Any], *, index: int = 0, prompt_index: int = 0) -> dict[str, Any]:
        """One stream chunk for one choice, with `usage` as the request's stream_options ask."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [choice],
        }
        if self.continuous_usage:
            body["usage"] = self.usage.choice_usage(choice=index, prompt=prompt_index)
        elif self.include_usage:
            body["usage"] = None
        return body

    def response(self, object_: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming body."""
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": usage,
        }

    def usage_chunk(self) -> dict[str, Any]:
        """The final chunk: no choices, the totals."""
        body = self.chunk({})
        body["choices"] = []
        body["usage"] = self.usage.usage()
        return body


def stream_usage_options(opts: Any) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats); continuous stats only on top of include_usage."""
    include = bool(opts and opts.include_usage)
    return include, include and bool(opts.continuous_usage_stats)


def usage_of(results: Sequence[Collected], *, chat: bool) -> dict[str, Any]:
    tracker = UsageTracker(chat=chat)
    for r in results:
        tracker.prompt_tokens[r.generation.prompt_index] = r.prompt_tokens
        tracker.completion_tokens[r.generation.request_id] = r.completion_tokens  # every candidate counts
    return tracker.usage()
