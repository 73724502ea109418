"""HFSeq2SeqEngine: the text2text (T5-style encoder-decoder) backend, on transformers' generate().

transformers 5 has no text2text pipeline, so this backend calls `model.generate()` on one worker
thread, with a streamer whose `put()` receives every new token id and feeds the shared
`ChoiceState` (stop ids, EOS, stop strings, the length budget: the same rules as every engine),
and a stopping criterion that ends generation on abort, at the choice's end or when the deadline
passes. Parts run one at a time; the sampling subset here is greedy, temperature, top_p, top_k
and seed. The frontend has validated and admitted every part it submits.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from engines.choice import ChoiceState
from engines.errors import EngineError, ErrorCode, deadline_exceeded
from engines.backend import LoadedBackend
from engines.loader import LoadedModel
from engines.options import EngineOptions
from engines.types import GenerationParams

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
    """One part on the worker: token ids in through `put`, deltas out to the requester."""

    def __init__(self, engine: HFSeq2SeqEngine, prompt_ids: list[int], params: GenerationParams, deadline: float | None, emit: Any) -> None:
        self.emit = emit
        self.deadline = deadline
        self.cancelled = False
        self.started = False
        # The decoder starts from nothing: no prompt text precedes what it writes.
        self.choice = ChoiceState(engine.tokenizer, prompt_ids, params, eos_token_ids=engine.tokenizer.eos_token_ids,
                                  budget=params.max_tokens, text_context=())

    # transformers' streamer protocol --------------------------------------------------------

    def put(self, value: torch.Tensor) -> None:
        if not self.started:  # the first call carries the decoder start token
            self.started = True
            return
        if self.choice.finished or self.cancelled:
            return
        self.emit(self.choice.step(int(value.reshape(-1)[0])))

    def end(self) -> None:
        if self.choice.finished or self.cancelled:
            return
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.emit(deadline_exceeded())
        else:
            self.emit(self.choice.end("length"))

    # stopping criterion ---------------------------------------------------------------------

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        late = self.deadline is not None and time.monotonic() > self.deadline
        stop = self.cancelled or self.choice.finished or late
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class HFSeq2SeqEngine(LoadedBackend):
    grammars = None  # structured outputs are not followed here (a 400 naming response_format)
    output_in_context = False  # max_model_len bounds the encoder's input; the decoder writes apart

    def __init__(self, loaded: LoadedModel, *, served_name: str, max_waiting: int = EngineOptions.max_waiting) -> None:
        super().__init__(loaded, served_name=served_name)
        self._model = loaded.model
        self._executor: ThreadPoolExecutor | None = None
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.max_in_flight = 1 + max_waiting  # one runs, the rest wait for the worker

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
            parts = len(self._runs)
        return {"running": min(parts, 1), "waiting": max(parts - 1, 0)}

    def unsupported(self, params: GenerationParams) -> str | None:
        return next((name for name, used in _UNSUPPORTED.items() if used(params)), None)

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams, deadline: float | None, emit: Any) -> None:
        if self._executor is None:
            raise EngineError(ErrorCode.UNAVAILABLE, "The engine is not running.")
        run = _Run(self, prompt_ids, params, deadline, emit)
        with self._lock:
            self._runs[request_id] = run
        self._executor.submit(self._generate, request_id, prompt_ids, run)

    def abort(self, request_id: str) -> None:
        with self._lock:
            run = self._runs.get(request_id)
            if run is not None:
                run.cancelled = True

    def _generate(self, request_id: str, ids: list[int], run: _Run) -> None:
        from transformers import StoppingCriteriaList

        p = run.choice.params
        try:
            if run.cancelled:
                return
            if p.seed is not None:
                torch.manual_seed(p.seed & 0xFFFF_FFFF_FFFF_FFFF)
            sampling = {"do_sample": False} if p.greedy else {
                "do_sample": True, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k or None,
            }
            input_ids = torch.tensor([ids], device=self._loaded.device)
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
        except Exception as exc:  # the part's own failure
            run.emit(EngineError(ErrorCode.INTERNAL, f"Generation failed: {type(exc).__name__}"))
        finally:
            with self._lock:
                self._runs.pop(request_id, None)
