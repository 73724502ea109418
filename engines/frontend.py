"""The engine frontend: what every request of every face goes through, written once.

A *backend* (the transformers scheduler, the seq2seq worker, vLLM, an encoder) only schedules
work: it takes validated token ids and hands deltas to an `emit` callback. Everything a client
relies on lives here, above every backend, so that it holds on every face by construction:

- prompts are tokenized off the event loop, validated against the model (vocabulary, context
  length, adapters) and against the operator's `RequestLimits`, and grammars are compiled once,
  all before anything runs;
- admission is for the whole request: a request of several parts (`n` choices, a prompt list,
  `best_of`, KServe instances, v2 batch rows, gRPC elements) reserves a slot for every part at once
  or is refused (429 / RESOURCE_EXHAUSTED) with nothing started (`admit` -> `Admission`);
- a passed deadline is refused before queueing (`DEADLINE_EXCEEDED`);
- the thread-to-loop hand-off (`DeltaChannel`), and abort when the consumer stops reading;
- completed / aborted counters and the `saturated` flag that readiness reports.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

from engines.channel import DeltaChannel
from engines.errors import EngineError, ErrorCode, deadline_exceeded
from engines.options import RequestLimits
from engines.tasks import Task
from engines.tokenizer import Tokenizer
from engines.types import (
    Capabilities,
    ClassificationResult,
    EmbeddingResult,
    EngineStats,
    FillMaskResult,
    GenerationDelta,
    GenerationParams,
    RequestContext,
    TokenClassificationResult,
)
from engines.validation import validate_encoder_inputs, validate_generation

GENERATIVE_TASKS = (Task.text_generation, Task.text2text_generation)
MAX_ENCODER_INPUTS = 2048  # inputs of one embed / classify / fill-mask request (OpenAI's embeddings limit)


class _Gate:
    """Slots for parts in flight, shared by every view of one backend, from every thread."""

    def __init__(self, slots: Callable[[], int]) -> None:
        self.slots = slots
        self.in_flight = 0
        self._lock = threading.Lock()

    def take(self, parts: int) -> None:
        with self._lock:
            if self.in_flight + parts > self.slots():
                raise EngineError(
                    ErrorCode.OVERLOADED,
                    f"The server is at capacity ({self.in_flight} of {self.slots()} generation slots in use; "
                    f"this request needs {parts}); retry shortly.",
                )
            self.in_flight += parts

    def give(self, parts: int) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - parts)


def _give_back(gate: _Gate, held: list[int]) -> None:
    gate.give(held[0])
    held[0] = 0


class Admission:
    """Slots reserved for every part of one request. A part gives its slot back when it ends;
    `close` gives back whatever is left (parts that never ran). Also a context manager."""

    def __init__(self, gate: _Gate, parts: int) -> None:
        self.parts = parts
        self._gate = gate
        self._held = [parts]
        # A request dropped without `close` still gives its slots back.
        self._finalizer = weakref.finalize(self, _give_back, gate, self._held)

    @property
    def held(self) -> int:
        return self._held[0]

    def release_one(self) -> None:
        if self._held[0] > 0:
            self._held[0] -= 1
            self._gate.give(1)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EngineFrontend:
    """The `Engine` every face talks to: pre-flight, admission, hand-off and abort over a backend."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._gate = _Gate(lambda: int(getattr(backend, "max_in_flight", 1 << 30)))
        self.completed_total = 0
        self.aborted_total = 0

    # -- what the faces read ------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    @property
    def tokenizer(self) -> Tokenizer:
        return self.backend.tokenizer

    def __getattr__(self, name: str) -> Any:  # backend specifics (limits, kv_bytes_per_token, ...)
        return getattr(self.backend, name)

    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        await self.backend.stop()

    async def check_health(self) -> bool:
        return await self.backend.check_health()

    def stats(self) -> EngineStats:
        backend = self.backend.stats()
        if not self._generates:
            return EngineStats.of(backend, saturated=bool(backend.get("saturated")))
        return EngineStats.of(
            backend, aborted_total=self.aborted_total, completed_total=self.completed_total, in_flight=self._gate.in_flight,
            saturated=self._gate.in_flight >= self._gate.slots(),
        )

    async def abort(self, request_id: str) -> None:
        self.backend.abort(request_id)

    # -- generation ---------------------------------------------------------------------------

    @property
    def _generates(self) -> bool:
        return any(t in self.capabilities.tasks for t in GENERATIVE_TASKS)

    def _require_generation(self) -> None:
        caps = self.capabilities
        if not self._generates:
            served = ", ".join(t.value for t in caps.tasks)
            raise EngineError(
                ErrorCode.UNSUPPORTED,
                f"The model `{caps.model_name}` is an encoder ({served}); it does not generate text.",
                param="model",
                reason="unsupported_model",
            )

    async def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """A prompt as token ids (text is tokenized off the event loop, special tokens added)."""
        if isinstance(prompt, str):
            return await asyncio.to_thread(self.tokenizer.encode, prompt)
        return [int(t) for t in prompt]

    def check_limits(self, prompts: Sequence[Sequence[int]], params: GenerationParams, choices: int, limits: RequestLimits,
                     *, prompt_param: str = "prompt") -> None:
        """The operator's limits on one request (each a 400 naming the parameter)."""
        parts = len(prompts) * choices
        slots = self._gate.slots()
        if parts > min(limits.max_request_parts, slots):
            cap = min(limits.max_request_parts, slots)
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"This request has {parts} parts ({len(prompts)} prompt(s) x {choices} choice(s)); this server runs at most "
                f"{cap} per request.",
                param="n" if len(prompts) == 1 else prompt_param,
            )
        longest = max((len(p) for p in prompts), default=0)
        if limits.max_prompt_tokens is not None and longest > limits.max_prompt_tokens:
            raise EngineError(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                f"The prompt has {longest} tokens; this server accepts at most {limits.max_prompt_tokens}.", param=prompt_param,
            )
        if any(len(s) > limits.max_stop_length for s in params.stop):
            raise EngineError(ErrorCode.INVALID_REQUEST, f"Stop strings may be at most {limits.max_stop_length} characters long.", param="stop")
        if params.prompt_logprobs is not None:
            scored = sum(len(p) for p in prompts) * choices
            if scored > limits.max_scored_prompt_tokens:
                raise EngineError(
                    ErrorCode.INVALID_REQUEST,
                    f"Scoring the prompt (echo with logprobs) covers {scored} tokens over all prompts and choices; "
                    f"this server scores at most {limits.max_scored_prompt_tokens} per request.", param="logprobs",
                )
        asked = parts * params.max_tokens
        if limits.max_total_tokens is not None and asked > limits.max_total_tokens:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"This request asks for up to {asked} generated tokens ({len(prompts)} prompt(s) x {choices} choice(s) x "
                f"{params.max_tokens}); this server allows {limits.max_total_tokens} per request.", param="max_tokens",
            )

    async def admit(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenerationParams,
        choices: int = 1,
        *,
        limits: RequestLimits = RequestLimits(),
        prompt_param: str = "prompt",
        deadline: float | None = None,
    ) -> Admission:
        """Check a whole request and reserve a slot for each of its parts, or refuse it with
        nothing started: a 400 for what the request itself gets wrong, 429 when the server has
        no room for all of it now, DEADLINE_EXCEEDED when its time is already up."""
        self._require_generation()
        caps = self.capabilities
        for ids in prompts:
            validate_generation(ids, params, vocab_size=caps.vocab_size, max_model_len=caps.max_model_len,
                                adapters=caps.extra.get("adapters", ()),  # type: ignore[arg-type]
                                output_in_context=getattr(self.backend, "output_in_context", True))
        unsupported = self.backend.unsupported(params)
        if unsupported is not None:
            raise EngineError(
                ErrorCode.UNSUPPORTED, f"`{unsupported}` is not supported by the {caps.engine} engine for this model.", param=unsupported,
            )
        self.check_limits(prompts, params, choices, limits, prompt_param=prompt_param)
        if params.structured is not None:  # compile once up front: bad grammars are a 400, not a stream error
            await asyncio.to_thread(self.backend.grammars.validate, params.structured)
        if deadline is not None and time.monotonic() > deadline:
            raise deadline_exceeded()
        parts = len(prompts) * choices
        self._gate.take(parts)
        return Admission(self._gate, parts)

    async def generate(self, prompt: str | Sequence[int], params: GenerationParams, ctx: RequestContext) -> AsyncIterator[GenerationDelta]:
        """Stream one part. With `ctx.admission` it runs on a slot of that request's admission
        (checked there); alone, it is checked and admitted here as a request of one part."""
        prompt_ids = await self.encode(prompt)
        admission = ctx.admission
        own = admission is None
        if admission is None:
            admission = await self.admit([prompt_ids], params, deadline=ctx.deadline)
        elif ctx.expired():
            raise deadline_exceeded()
        channel = DeltaChannel()
        try:
            self.backend.submit(ctx.request_id, prompt_ids, params, ctx.deadline, channel.emit)
        except BaseException:
            admission.close() if own else admission.release_one()
            raise
        try:
            while not channel.finished:
                yield await channel.next()
            self.completed_total += 1
        finally:
            if not channel.finished:  # the consumer went away (disconnect, cancel, a sibling's failure)
                self.aborted_total += 1
                self.backend.abort(ctx.request_id)
            if own:
                admission.close()
            else:
                admission.release_one()

    # -- encoders ---------------------------------------------------------------------------

    def _require(self, task: Task, what: str) -> None:
        """A per-task call on a model loaded for another task: the client's mistake."""
        caps = self.capabilities
        if task not in caps.tasks:
            served = ", ".join(t.value for t in caps.tasks)
            raise EngineError(
                ErrorCode.UNSUPPORTED, f"The model `{caps.model_name}` serves {served}; it does not serve {what}.",
                param="model", reason="unsupported_model",
            )

    async def _encoder_call(self, task: Task, what: str, inputs: Sequence[Sequence[int]], ctx: RequestContext, **extra: Any) -> Any:
        self._require(task, what)
        if len(inputs) > MAX_ENCODER_INPUTS:
            raise EngineError(ErrorCode.INVALID_REQUEST, f"At most {MAX_ENCODER_INPUTS} inputs per request, got {len(inputs)}.", param="input")
        caps = self.capabilities
        validate_encoder_inputs(inputs, vocab_size=caps.vocab_size, max_model_len=caps.max_model_len)
        if ctx.expired():
            raise deadline_exceeded()
        return await getattr(self.backend, task_method(task))(inputs, ctx, **extra)

    async def embed(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[EmbeddingResult]:
        return await self._encoder_call(Task.text_embedding, "embeddings", inputs, ctx)

    async def classify(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[ClassificationResult]:
        return await self._encoder_call(Task.sequence_classification, "sequence classification", inputs, ctx)

    async def classify_tokens(self, inputs: Sequence[Sequence[int]], ctx: RequestContext, pad_to: int | None = None) -> list[TokenClassificationResult]:
        """`pad_to`: also the logits of padding positions up to that width, computed with the
        padding masked (as a batch padded to that width gives them: KServe's output)."""
        extra = {"pad_to": pad_to} if pad_to else {}
        return await self._encoder_call(Task.token_classification, "token classification", inputs, ctx, **extra)

    async def fill_mask(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[FillMaskResult]:
        return await self._encoder_call(Task.fill_mask, "fill-mask", inputs, ctx)


def task_method(task: Task) -> str:
    return {
        Task.text_embedding: "embed", Task.sequence_classification: "classify",
        Task.token_classification: "classify_tokens", Task.fill_mask: "fill_mask",
    }[task]


async def run_parts(parts: Collection[Any]) -> list[Any]:
    """Await coroutines of one request's parts together; when one fails, the others are
    cancelled (their generations aborted) before the error is raised."""
    tasks = [asyncio.ensure_future(p) for p in parts]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Admission", "EngineFrontend", "RequestLimits", "run_parts"]
