"""HFEngine: the generation backend over a transformers model and its batching scheduler.

It only schedules: the frontend (`engines.frontend`) has already tokenized, validated and
admitted every part it submits."""

from __future__ import annotations

import asyncio
import logging

import torch

from engines.backend import LoadedBackend
from engines.hf.scheduler import Emit, GenerationScheduler, SchedulerLimits
from engines.hf.scheduler import Sequence as SchedSequence
from engines.loader import LoadedModel, ModelSpec, load_model
from engines.structured import GrammarCompiler
from engines.threads import ThreadTuner
from engines.types import GenerationParams

log = logging.getLogger(__name__)


class HFEngine(LoadedBackend):
    def __init__(
        self, loaded: LoadedModel, *, served_name: str, limits: SchedulerLimits | None = None, tuner: ThreadTuner | None = None
    ) -> None:
        super().__init__(loaded, served_name=served_name)
        # Logits have the model's vocabulary size, which may exceed the tokenizer's.
        logits_vocab = int(getattr(loaded.model.config, "vocab_size", 0) or self._tokenizer.vocab_size)
        self.grammars = GrammarCompiler(loaded.hf_tokenizer, logits_vocab)
        self._scheduler = GenerationScheduler(
            loaded.model,
            self._tokenizer,
            max_model_len=loaded.max_model_len,
            eos_token_ids=self._tokenizer.eos_token_ids,
            vocab_size=logits_vocab,
            grammars=self.grammars,
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

    @property
    def max_in_flight(self) -> int:
        return self.limits.max_num_seqs + self.limits.max_waiting

    def stats(self) -> dict[str, int]:
        return self._scheduler.stats()

    def unsupported(self, params: GenerationParams) -> str | None:
        return None  # every sampling, logprob and structured-output parameter

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams, deadline: float | None, emit: Emit) -> None:
        self._scheduler.submit(SchedSequence(request_id=request_id, prompt_ids=prompt_ids, params=params, emit=emit, deadline=deadline))

    def abort(self, request_id: str) -> None:
        self._scheduler.abort(request_id)


__all__ = ["HFEngine"]
