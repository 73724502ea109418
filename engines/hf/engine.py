"""HFEngine: the `Engine` protocol over a transformers model and the generation scheduler."""

from __future__ import annotations

import asyncio
import logging

import torch
from collections.abc import AsyncIterator, Sequence

from engines.errors import EngineError, ErrorCode
from engines.hf.base import GenerativeOnly, LoadedEngine
from engines.hf.scheduler import GenerationScheduler, SchedulerLimits
from engines.hf.scheduler import Sequence as SchedSequence
from engines.loader import LoadedModel, ModelSpec, load_model
from engines.structured import GrammarCompiler
from engines.types import (
    GenerationDelta,
    GenerationParams,
    RequestContext,
)

log = logging.getLogger(__name__)


def context_length_message(max_model_len: int, prompt_tokens: int, max_tokens: int) -> str:
    """vLLM's wording, so clients that parse it keep working."""
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} input tokens, "
        f"for a total of at least {prompt_tokens + max_tokens} tokens. Please reduce the length of "
        "the input prompt or the number of requested output tokens."
    )


class HFEngine(GenerativeOnly, LoadedEngine):
    def __init__(self, loaded: LoadedModel, *, served_name: str, limits: SchedulerLimits | None = None) -> None:
        super().__init__(loaded, served_name=served_name)
        # Logits have the model's vocabulary size, which may exceed the tokenizer's.
        logits_vocab = int(getattr(loaded.model.config, "vocab_size", 0) or self._tokenizer.vocab_size)
        self._grammars = GrammarCompiler(loaded.hf_tokenizer, logits_vocab)
        self._scheduler = GenerationScheduler(
            loaded.model,
            self._tokenizer,
            max_model_len=loaded.max_model_len,
            eos_token_ids=self._tokenizer.eos_token_ids,
            vocab_size=logits_vocab,
            grammars=self._grammars,
            limits=limits,
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token of one row takes: keys and values, every layer."""
        cfg = self._loaded.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return 2 * cfg.num_hidden_layers * heads * head_dim * torch.finfo(self._loaded.dtype).bits // 8

    @classmethod
    def load(cls, spec: ModelSpec, *, served_name: str, limits: SchedulerLimits | None = None) -> HFEngine:
        """Load weights and tokenizer (blocking, seconds): call before serving or in a thread."""
        return cls(load_model(spec), served_name=served_name, limits=limits)

    # -- protocol -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._scheduler.alive:
            self._scheduler.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._scheduler.stop)

    async def check_health(self) -> bool:
        return self._scheduler.alive

    @property
    def limits(self) -> SchedulerLimits:
        return self._scheduler.limits

    def stats(self) -> dict[str, int]:
        return self._scheduler.stats()

    async def abort(self, request_id: str) -> None:
        self._scheduler.abort(request_id)

    def validate_prompt(self, prompt_ids: Sequence[int], params: GenerationParams) -> None:
        if not prompt_ids:
            raise EngineError(ErrorCode.INVALID_REQUEST, "The prompt is empty.", param="prompt")
        vocab = self._capabilities.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"Token id {bad} is out of vocabulary (the vocabulary has {vocab} tokens).",
                param="prompt",
                reason="invalid_token_id",
            )
        if params.max_tokens < 0 or (params.max_tokens == 0 and params.prompt_logprobs is None):
            raise EngineError(ErrorCode.INVALID_REQUEST, "max_tokens must be at least 1.", param="max_tokens")
        bad_bias = next((t for t, _ in params.logit_bias if not 0 <= t < vocab), None)
        if bad_bias is not None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"logit_bias names token id {bad_bias}, which is outside the vocabulary (0..{vocab - 1}).",
                param="logit_bias",
            )
        bad_stop = next((t for t in params.stop_token_ids if not 0 <= t < vocab), None)
        if bad_stop is not None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST, f"stop_token_ids names token id {bad_stop}, which is outside the vocabulary.",
                param="stop_token_ids",
            )
        limit = self._capabilities.max_model_len
        if len(prompt_ids) + params.max_tokens > limit:
            raise EngineError(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                context_length_message(limit, len(prompt_ids), params.max_tokens),
                param="prompt" if len(prompt_ids) >= limit else "max_tokens",
            )

    async def generate(
        self, prompt: str | Sequence[int], params: GenerationParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationDelta]:
        if isinstance(prompt, str):
            prompt_ids = await asyncio.to_thread(self._tokenizer.encode, prompt)
        else:
            prompt_ids = [int(t) for t in prompt]
        self.validate_prompt(prompt_ids, params)
        if params.structured is not None:  # compile once up front: bad schemas are a 400, not a stream error
            await asyncio.to_thread(self._grammars.validate, params.structured)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()

        def emit(item: GenerationDelta | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        seq = SchedSequence(
            request_id=ctx.request_id,
            prompt_ids=prompt_ids,
            params=params,
            emit=emit,
            deadline=ctx.deadline,
        )
        self._scheduler.submit(seq)
        done = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if item.finish_reason is not None:
                    done = True
                yield item
                if done:
                    return
        finally:
            if not done:  # the consumer went away (disconnect, cancel): free the slot now
                self._scheduler.abort(ctx.request_id)


__all__ = ["HFEngine", "context_length_message"]
