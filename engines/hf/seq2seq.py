"""HFSeq2SeqEngine: text2text generation (T5-style encoder-decoder) with transformers' generate().

transformers 5 has no text2text pipeline, so this engine calls `model.generate()` on one worker
thread, with a streamer whose `put()` receives every new token id (not words) and feeds the
shared `ChoiceText`, and a stopping criterion that ends generation on abort, on a stop string
or when the deadline passes. Requests run one at a time; the sampling subset here is greedy,
temperature, top_p, top_k and seed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from engines.detokenizer import ChoiceText
from engines.channel import DeltaChannel
from engines.errors import EngineError, ErrorCode
from engines.hf.base import GenerativeOnly, LoadedEngine
from engines.loader import LoadedModel
from engines.types import (
    GenerationDelta,
    GenerationParams,
    RequestContext,
)

# Parameters this engine cannot honour: a request that sets them gets a 400 naming them.
_UNSUPPORTED = {
    "logprobs": lambda p: p.logprobs is not None,
    "prompt_logprobs": lambda p: p.prompt_logprobs is not None,
    "response_format": lambda p: p.structured is not None,
    "logit_bias": lambda p: bool(p.logit_bias),
    "presence_penalty": lambda p: p.presence_penalty != 0,
    "frequency_penalty": lambda p: p.frequency_penalty != 0,
    "repetition_penalty": lambda p: p.repetition_penalty != 1.0,
    "min_p": lambda p: p.min_p != 0,
    "min_tokens": lambda p: p.min_tokens != 0,
}


class _Run:
    """One request on the worker: token ids in through `put`, deltas out to the event loop."""

    def __init__(self, engine: HFSeq2SeqEngine, prompt_len: int, params: GenerationParams, emit: Any) -> None:
        self.params = params
        self.emit = emit
        self.prompt_len = prompt_len
        self.count = 0
        self.cancelled = False
        self.finished = False
        self.started = False
        self.eos = engine.tokenizer.eos_token_ids
        self.text = ChoiceText(engine.tokenizer, [], stop=params.stop,
                               include_stop_str_in_output=params.include_stop_str_in_output,
                               skip_special_tokens=params.skip_special_tokens)

    # transformers' streamer protocol --------------------------------------------------------

    def put(self, value: torch.Tensor) -> None:
        if not self.started:  # the first call carries the decoder start token
            self.started = True
            return
        if self.finished:
            return
        token = int(value.reshape(-1)[0])
        self.count += 1
        finish, stop_reason, piece = None, None, ""
        if token in self.params.stop_token_ids:
            finish, stop_reason = "stop", token
        elif token in self.eos and not self.params.ignore_eos:
            finish = "stop"
        else:
            piece, matched, _ = self.text.push(token)
            if matched is not None:
                finish, stop_reason = "stop", matched
            elif self.count >= self.params.max_tokens:
                finish = "length"
        if finish is not None and not isinstance(stop_reason, str):
            tail, matched, _ = self.text.finish()
            piece += tail
            if matched is not None:
                stop_reason = matched
        self.finished = finish is not None
        self.emit(GenerationDelta((token,), piece, self.prompt_len, self.count, finish, stop_reason))  # type: ignore[arg-type]

    def end(self) -> None:
        if not self.finished and not self.cancelled and self.count:
            tail, _, _ = self.text.finish()
            self.finished = True
            self.emit(GenerationDelta((), tail, self.prompt_len, self.count, "length"))

    # stopping criterion ---------------------------------------------------------------------

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        stop = self.cancelled or self.finished
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class HFSeq2SeqEngine(GenerativeOnly, LoadedEngine):
    kind = "is a text2text model"

    def __init__(self, loaded: LoadedModel, *, served_name: str) -> None:
        super().__init__(loaded, served_name=served_name)
        self._model = loaded.model
        self._executor: ThreadPoolExecutor | None = None
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._completed = 0
        self._aborted = 0

    async def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-seq2seq")

    async def stop(self) -> None:
        with self._lock:
            for run in self._runs.values():
                run.cancelled = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def check_health(self) -> bool:
        return self._executor is not None

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = len(self._runs)
        return {"running": running, "waiting": 0, "aborted_total": self._aborted, "completed_total": self._completed}

    async def abort(self, request_id: str) -> None:
        with self._lock:
            run = self._runs.get(request_id)
            if run is not None and not run.cancelled:
                run.cancelled = True
                self._aborted += 1

    def _generate(self, request_id: str, ids: list[int], run: _Run) -> None:
        from transformers import StoppingCriteriaList

        p = run.params
        if p.seed is not None:
            torch.manual_seed(p.seed & 0xFFFF_FFFF_FFFF_FFFF)
        sampling = {"do_sample": False} if p.greedy else {
            "do_sample": True, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k or None,
        }
        input_ids = torch.tensor([ids], device=self._loaded.device)
        try:
            with torch.inference_mode():
                self._model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=p.max_tokens,
                    min_new_tokens=p.max_tokens if p.ignore_eos else None,
                    streamer=run,
                    stopping_criteria=StoppingCriteriaList([run]),
                    **sampling,
                )
            run.end()
        except Exception as exc:  # the request's own failure
            run.emit(EngineError(ErrorCode.INTERNAL, f"Generation failed: {type(exc).__name__}"))
        finally:
            with self._lock:
                self._runs.pop(request_id, None)
                self._completed += 1

    async def generate(
        self, prompt: str | Sequence[int], params: GenerationParams, ctx: RequestContext
    ) -> AsyncIterator[GenerationDelta]:
        for name, used in _UNSUPPORTED.items():
            if used(params):
                raise EngineError(ErrorCode.UNSUPPORTED, f"`{name}` is not supported for text2text models.", param=name)
        ids = await asyncio.to_thread(self._tokenizer.encode, prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise EngineError(ErrorCode.INVALID_REQUEST, "The prompt is empty.", param="prompt")
        limit = self._capabilities.max_model_len
        if len(ids) > limit:
            raise EngineError(ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                              f"This model's maximum input length is {limit} tokens; your input has {len(ids)}.", param="prompt")
        if params.max_tokens < 1:
            raise EngineError(ErrorCode.INVALID_REQUEST, "max_tokens must be at least 1.", param="max_tokens")
        if self._executor is None:
            raise EngineError(ErrorCode.UNAVAILABLE, "The engine is not running.")
        channel = DeltaChannel()
        run = _Run(self, len(ids), params, channel.emit)
        with self._lock:
            self._runs[ctx.request_id] = run
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._generate, ctx.request_id, ids, run)
        try:
            while not channel.finished:
                yield await channel.next()
        finally:
            if not channel.finished:
                await self.abort(ctx.request_id)
            future.add_done_callback(lambda f: f.exception())
