"""HFEngine: the `Engine` protocol over a transformers model and the generation scheduler."""

from __future__ import annotations

import asyncio
import logging

import torch
from collections.abc import AsyncIterator, Sequence

from engines.channel import DeltaChannel
from engines.errors import EngineError, ErrorCode
from engines.hf.base import GenerativeOnly, LoadedEngine
from engines.hf.scheduler import GenerationScheduler, SchedulerLimits
from engines.hf.scheduler import Sequence as SchedSequence
from engines.loader import LoadedModel, ModelSpec, load_model
from engines.structured import GrammarCompiler
from engines.threads import ThreadTuner
from engines.validation import validate_generation
from engines.types import (
    GenerationDelta,
    GenerationParams,
    RequestContext,
)

log = logging.getLogger(__name__)


class HFEngine(GenerativeOnly, LoadedEngine):
    def __init__(
        self, loaded: LoadedModel, *, served_name: str, limits: SchedulerLimits | None = None, tuner: ThreadTuner | None = None
    ) -> None:
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
            tuner=tuner,
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

    async def generate(
        self, prompt: str | Sequence[int], params: GenerationParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationDelta]:
        if isinstance(prompt, str):
            prompt_ids = await asyncio.to_thread(self._tokenizer.encode, prompt)
        else:
            prompt_ids = [int(t) for t in prompt]
        validate_generation(prompt_ids, params, vocab_size=self._capabilities.vocab_size, max_model_len=self._capabilities.max_model_len)
        if params.structured is not None:  # compile once up front: bad schemas are a 400, not a stream error
            await asyncio.to_thread(self._grammars.validate, params.structured)

        if ctx.expired():  # before any work: nobody waits for this answer any more
            raise EngineError(ErrorCode.UNAVAILABLE, "The request deadline was exceeded.")
        channel = DeltaChannel()
        seq = SchedSequence(
            request_id=ctx.request_id,
            prompt_ids=prompt_ids,
            params=params,
            emit=channel.emit,
            deadline=ctx.deadline,
        )
        self._scheduler.submit(seq)
        try:
            while not channel.finished:
                yield await channel.next()
        finally:
            if not channel.finished:  # the consumer went away (disconnect, cancel): free the slot now
                self._scheduler.abort(ctx.request_id)


__all__ = ["HFEngine"]
