"""The generation loop of the transformers engine, on its own thread.

The scheduler owns the model. Requests wait in a FIFO queue; the loop runs decoding *steps*
(one forward pass each) over the model with a KV cache, samples with each request's own RNG,
turns token ids into text with the shared `ChoiceText`, and hands every step's delta to the
request's event loop. Abort and deadlines are checked between steps, so a cancelled request
stops within one step. Today one sequence runs at a time; the step structure is what lets a
batched scheduler replace `_run_sequence` without touching the engine seam.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engines.detokenizer import ChoiceText, decode_prompt_pieces
from engines.errors import EngineError, ErrorCode
from engines.sampling import SequenceSampler, top_logprobs
from engines.structured import GrammarCompiler
from engines.tokenizer import Tokenizer
from engines.types import GenerationDelta, GenerationParams, TokenLogprob

log = logging.getLogger(__name__)

Emit = Callable[[GenerationDelta | BaseException], None]


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: GenerationParams
    emit: Emit  # thread-safe hand-off to the requester's event loop
    deadline: float | None = None
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)


class GenerationScheduler:
    def __init__(
        self,
        model: Any,
        tokenizer: Tokenizer,
        *,
        max_model_len: int,
        eos_token_ids: frozenset[int],
        vocab_size: int,
        grammars: GrammarCompiler,
    ) -> None:
        self._model = model
        self._tok = tokenizer
        self._vocab_size = vocab_size
        self._grammars = grammars
        self._max_model_len = max_model_len
        self._eos = eos_token_ids
        self._device = next(model.parameters()).device
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._running: dict[str, Sequence] = {}
        self._by_id: dict[str, Sequence] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.aborted_total = 0
        self.completed_total = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hf-generation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for seq in self._by_id.values():
                seq.cancelled = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests -----------------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping or not self.alive:
                raise EngineError(ErrorCode.UNAVAILABLE, "The generation engine is not running.")
            if seq.request_id in self._by_id:
                raise EngineError(ErrorCode.INVALID_REQUEST, f"Duplicate request id {seq.request_id}")
            self._by_id[seq.request_id] = seq
            self._waiting.append(seq)
            self._cond.notify()

    def abort(self, request_id: str) -> None:
        with self._cond:
            seq = self._by_id.get(request_id)
            if seq is None or seq.cancelled:
                return
            seq.cancelled = True
            self.aborted_total += 1
            if seq in self._waiting:
                self._waiting.remove(seq)
                self._by_id.pop(request_id, None)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "aborted_total": self.aborted_total,
                "completed_total": self.completed_total,
            }

    # -- the loop -----------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """One tiny forward pass, so the first request does not pay for lazy initialisation."""
        from transformers import DynamicCache

        with torch.inference_mode():
            self._forward((self._tok.encode("Hello", add_special_tokens=False) or [0])[:1], DynamicCache())

    def _loop(self) -> None:
        try:
            self._warm_up()
        except Exception:  # a model that cannot run one token will fail requests with a clear error
            log.exception("warm-up forward pass failed")
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                seq = self._waiting.popleft()
                self._running[seq.request_id] = seq
            try:
                self._run_sequence(seq)
            except Exception as exc:  # a fault in one request must not kill the loop
                log.exception("generation failed for %s", seq.request_id)
                self._retire(seq)
                seq.emit(EngineError(ErrorCode.INTERNAL, f"Generation failed: {type(exc).__name__}"))
            finally:
                self._retire(seq)

    def _retire(self, seq: Sequence, *, completed: bool = False) -> None:
        """Forget a sequence. Called before its last message, so stats never lag behind clients."""
        with self._cond:
            if self._running.pop(seq.request_id, None) is not None and completed:
                self.completed_total += 1
            self._by_id.pop(seq.request_id, None)

    def _forward(self, ids: list[int], cache: Any, *, all_logits: bool = False) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        out = self._model(
            input_ids=input_ids, use_cache=True, logits_to_keep=0 if all_logits else 1, **{self._cache_kwarg: cache}
        )
        return out.logits[0] if all_logits else out.logits[0, -1]

    def _alternatives(self, logprobs: torch.Tensor, k: int) -> tuple[tuple[int, str, float], ...]:
        return tuple((i, self._tok.decode([i], skip_special_tokens=False), lp) for i, lp in top_logprobs(logprobs, k))

    def _prompt_logprobs(self, seq: Sequence, logits: torch.Tensor) -> tuple[TokenLogprob | None, ...]:
        """Logprob of every prompt token given the ones before it (the first has none)."""
        params = seq.params
        k = params.prompt_logprobs or 0
        pieces = decode_prompt_pieces(self._tok, seq.prompt_ids, skip_special_tokens=params.skip_special_tokens)
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        out: list[TokenLogprob | None] = [None]
        for pos in range(1, len(seq.prompt_ids)):
            token = seq.prompt_ids[pos]
            row = logprobs[pos - 1]
            out.append(TokenLogprob(token, pieces[pos], float(row[token]), self._alternatives(row, k)))
        return tuple(out)

    def _run_sequence(self, seq: Sequence) -> None:
        from transformers import DynamicCache

        params = seq.params
        prompt_len = len(seq.prompt_ids)
        text = ChoiceText(
            self._tok,
            seq.prompt_ids,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            skip_special_tokens=params.skip_special_tokens,
            stops_active=params.min_tokens == 0,
        )
        sampler = SequenceSampler(
            params,
            vocab_size=self._vocab_size,
            prompt_ids=seq.prompt_ids,
            blocked_until_min=set(params.stop_token_ids) | (set() if params.ignore_eos else set(self._eos)),
            device=self._device,
        )
        constraint = self._grammars.constraint(params.structured) if params.structured else None
        # Never run past the context window, whatever max_tokens says.
        budget = min(params.max_tokens, self._max_model_len - prompt_len)
        cache = DynamicCache()

        with torch.inference_mode():
            if params.prompt_logprobs is not None:
                all_logits = self._forward(seq.prompt_ids, cache, all_logits=True)
                prompt_logprobs: tuple[TokenLogprob | None, ...] | None = self._prompt_logprobs(seq, all_logits)
                logits = all_logits[-1]
            else:
                prompt_logprobs = None
                logits = self._forward(seq.prompt_ids, cache)
            if budget <= 0:  # scoring only: the prompt's logprobs, no output
                self._retire(seq, completed=True)
                seq.emit(GenerationDelta((), "", prompt_len, 0, "length", prompt_logprobs=prompt_logprobs))
                return
            while True:
                if seq.cancelled:
                    return
                if seq.deadline is not None and time.monotonic() > seq.deadline:
                    self._retire(seq)
                    seq.emit(EngineError(ErrorCode.UNAVAILABLE, "The request deadline was exceeded."))
                    return
                count = len(seq.generated)
                processed = sampler.process(logits, count, constraint.apply if constraint else None)
                token = sampler.choose(processed)
                sampler.observe(token)
                if constraint is not None:
                    constraint.advance(token)
                seq.generated.append(token)
                count += 1
                if count == params.min_tokens:
                    text.activate_stops()

                logprob = None
                if params.logprobs is not None:
                    raw = torch.log_softmax(logits.float(), dim=-1)
                    logprob = (float(raw[token]), self._alternatives(raw, params.logprobs))

                finish: str | None = None
                stop_reason: str | int | None = None
                if token in params.stop_token_ids:
                    finish, stop_reason = "stop", token
                elif token in self._eos and not params.ignore_eos:
                    finish, stop_reason = "stop", None
                if finish is None:
                    piece, matched, items = text.push(token, logprob)
                    if matched is not None:
                        finish, stop_reason = "stop", matched
                    elif constraint is not None and constraint.finished:
                        finish = "stop"  # the grammar is complete
                    elif count >= budget:
                        finish = "length"
                else:
                    piece, items = "", ()
                    if logprob is not None:  # EOS / stop id: no text, but its logprob is reported
                        items = (TokenLogprob(token, "", logprob[0], logprob[1]),)
                if finish is not None and not isinstance(stop_reason, str):
                    tail, matched, more = text.finish()
                    piece, items = piece + tail, items + more
                    if matched is not None:
                        finish, stop_reason = "stop", matched

                delta = GenerationDelta(
                    token_ids=(token,),
                    text=piece,
                    prompt_tokens=prompt_len,
                    completion_tokens=count,
                    finish_reason=finish,  # type: ignore[arg-type]
                    stop_reason=stop_reason,
                    logprobs=items,
                    prompt_logprobs=prompt_logprobs if count == 1 else None,
                )
                if finish is not None:
                    self._retire(seq, completed=True)
                    seq.emit(delta)
                    return
                seq.emit(delta)
                logits = self._forward([token], cache)
