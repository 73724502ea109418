"""The generation loop of the transformers engine: continuous batching on its own thread.

The scheduler owns the model. Every iteration is one *step*:

1. admit waiting requests (bounded by `max_num_seqs` and the KV-cache budget) and prefill them
   together in one left-padded forward pass; their KV rows join the running batch;
2. for every running row, pick the next token from its pending logits with that request's own
   processors and RNG (penalties, logit_bias, constraint, seed, logprobs), turn it into text with
   the shared `ChoiceState`, and hand the delta to the request's event loop;
3. drop finished, aborted and expired rows from the batch at once (their KV memory goes with them);
4. one decode forward pass for all remaining rows gives everybody's next logits.

Rows of different lengths share one left-padded KV cache with a 2-D attention mask and per-row
position ids. The cache is preallocated (`engines.hf.kv_cache`): a decode step writes one column in
place, a finished row is overwritten by the last row, a joining row goes into a spare row. When the
cache outgrows its budget the newest row is preempted: it leaves the batch and is re-admitted later
by recomputing prompt + output so far.
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
import torch.nn.functional as F

from engines.choice import ChoiceState, output_budget
from engines.detokenizer import decode_prompt_pieces
from engines.errors import EngineError, ErrorCode, deadline_exceeded
from engines.hf.kv_cache import SlabLayer, fill_holes, new_cache
from engines.hf.prefix_cache import MIN_REUSE, PrefixCache
from engines.options import EngineOptions
from engines.sampling import SequenceSampler, choose_plain_rows, make_generator, top_logprobs
from engines.structured import Constraint, GrammarCompiler
from engines.threads import ThreadTuner
from engines.tokenizer import Tokenizer
from engines.types import GenerationDelta, GenerationParams, TokenLogprob

log = logging.getLogger(__name__)

Emit = Callable[[GenerationDelta | BaseException], None]
SCORING_CHUNK = 256  # prompt tokens per forward pass when every position is scored (measured: 4x less memory than all at once, 18 % slower)
# Prompts longer than this are prefilled a chunk at a time between decode steps while other
# streams run, so that they keep going (a 2,000-token prompt otherwise stalls them all for its
# whole prefill).
PREFILL_CHUNK = 256


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: GenerationParams
    emit: Emit  # thread-safe hand-off to the requester's event loop
    deadline: float | None = None
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    # Decoding state, made on first admission and kept across preemptions.
    choice: ChoiceState | None = None
    sampler: SequenceSampler | None = None
    constraint: Constraint | None = None
    preempted: int = 0
    admitted: int = 0  # admission order: the newest row is the one preempted

    @property
    def context(self) -> list[int]:
        """What the model must have seen before the next token: prompt + output so far."""
        return self.prompt_ids + self.generated


@dataclass
class SchedulerLimits:
    max_num_seqs: int = EngineOptions.max_num_seqs  # rows decoded together
    max_waiting: int = EngineOptions.max_waiting  # queue places beyond the batch (the frontend admits up to max_num_seqs + max_waiting)
    kv_cache_tokens: int = 1 << 20  # padded rows x width the KV cache may hold
    prefix_cache_tokens: int = 0  # KV of finished sequences kept for prompts that start the same way (0: off)


@dataclass(eq=False)
class _Prefill:
    """A prompt being prefilled a chunk at a time: its own one-row cache and how far it got."""

    seq: Sequence
    cache: Any
    done: int = 0  # context tokens whose KV is in `cache`


@dataclass
class Batch:
    """The running rows and their shared, left-padded KV cache."""

    rows: list[Sequence]
    cache: Any  # a transformers cache whose layers are `SlabLayer`s ([rows, heads, width, head_dim] views)
    mask: torch.Tensor  # [rows, width], 1 where a real token is
    lengths: torch.Tensor  # [rows], real tokens per row (= next position id)
    logits: torch.Tensor  # [rows, vocab], the pending next-token logits

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


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
        limits: SchedulerLimits | None = None,
        tuner: ThreadTuner | None = None,
    ) -> None:
        self._model = model
        self._tok = tokenizer
        self._vocab_size = vocab_size
        self._grammars = grammars
        self._max_model_len = max_model_len
        self._eos = eos_token_ids
        self.limits = limits or SchedulerLimits()
        self.tuner = tuner
        self._device = next(model.parameters()).device
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        pad = tokenizer.hf.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._batch: Batch | None = None
        self._by_id: dict[str, Sequence] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.aborted_total = 0
        self.completed_total = 0
        self.preempted_total = 0
        self.steps_total = 0
        self._admissions = 0
        self._rng = make_generator(None, self._device)  # rows that sample together and asked for no seed
        self.last_batch_size = 0
        self._texts: dict[int, str] = {}  # token id -> its text alone (logprob alternatives)
        self._prefix: PrefixCache | None = None
        self._prefilling: deque[_Prefill] = deque()  # long prompts, one chunk per step, oldest first

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._prefix = PrefixCache(self.limits.prefix_cache_tokens) if self.limits.prefix_cache_tokens > 0 else None
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
            if seq in self._waiting:  # never started: forget it now
                self._waiting.remove(seq)
                self._by_id.pop(request_id, None)
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        with self._cond:
            running = len(self._by_id) - len(self._waiting)
            return {
                "running": running,
                "waiting": len(self._waiting),
                "aborted_total": self.aborted_total,
                "completed_total": self.completed_total,
                "preempted_total": self.preempted_total,
                "steps_total": self.steps_total,
                "batch_size": self.last_batch_size,
                "kv_cache_tokens": 0 if self._batch is None else len(self._batch.rows) * self._batch.width,
                "kv_cache_capacity_tokens": self.limits.kv_cache_tokens,
                **({"cpu_threads": self.tuner.threads} if self.tuner is not None else {}),
                **({"prefix_cache_hits": self._prefix.hits, "prefix_cache_reused_tokens": self._prefix.reused_tokens}
                   if self._prefix is not None else {}),
            }

    # -- the loop -----------------------------------------------------------------------------

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, *, all_logits: bool = False) -> torch.Tensor:
        out = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
            **{self._cache_kwarg: cache},
        )
        return out.logits

    def _warm_up(self) -> None:
        """One tiny forward pass, so the first request does not pay for lazy initialisation."""
        ids = torch.tensor([(self._tok.encode("Hello", add_special_tokens=False) or [0])[:1]], device=self._device)
        with torch.inference_mode():
            self._forward(ids, torch.ones_like(ids), torch.zeros_like(ids), new_cache())

    def _loop(self) -> None:
        """The thread's body. If it ever dies, nobody may wait on it: every request fails at
        once, `alive` turns false (so readiness and health turn off) and new requests get 503."""
        try:
            self._serve()
        except BaseException:
            log.critical("the generation thread died; failing its requests", exc_info=True)
            raise
        finally:
            with self._cond:
                self._stopping = True
                stranded, self._waiting = list(self._waiting), deque()
            error = EngineError(ErrorCode.UNAVAILABLE, "The generation engine stopped.")
            self._fail_all(error)
            for seq in stranded:
                self._retire(seq)
                seq.emit(error)

    def _serve(self) -> None:
        try:
            self._warm_up()
        except Exception:  # a model that cannot run one token will fail requests with a clear error
            log.exception("warm-up forward pass failed")
        while True:
            with self._cond:
                while not self._waiting and self._batch is None and not self._prefilling and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    stranded, self._waiting = list(self._waiting), deque()
            if self._stopping:  # nobody may wait forever on a stopped engine
                error = EngineError(ErrorCode.UNAVAILABLE, "The engine is shutting down.")
                self._fail_all(error)
                for seq in stranded:
                    self._retire(seq)
                    seq.emit(error)
                return
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # a fault must fail its requests, not kill the loop
                log.exception("generation step failed")
                self._fail_all(EngineError(ErrorCode.INTERNAL, f"Generation failed: {type(exc).__name__}"))

    def _fail_all(self, error: EngineError) -> None:
        rows = (self._batch.rows if self._batch is not None else []) + [p.seq for p in self._prefilling]
        self._batch = None
        self._prefilling.clear()
        for seq in rows:
            self._retire(seq)
            seq.emit(error)

    def _retire(self, seq: Sequence, *, completed: bool = False) -> None:
        """Forget a sequence. Called before its last message, so stats never lag behind clients."""
        with self._cond:
            if self._by_id.pop(seq.request_id, None) is not None and completed:
                self.completed_total += 1

    def _step(self) -> None:
        self._admit()
        ready = self._prefill_chunk()
        batch = self._batch
        if batch is None and ready is None:
            return
        self.steps_total += 1
        now = time.monotonic()
        if batch is not None:
            self.last_batch_size = len(batch.rows)
            chosen = self._choose_plain(batch)
            keep = [i for i, seq in enumerate(batch.rows) if self._advance_row(batch, i, seq, now, chosen.get(i))]
            if len(keep) < len(batch.rows):
                self._select(keep)
        # A prompt whose chunked prefill just ended picks its first token before it joins the
        # batch: one that ends there (max_tokens 1, an immediate EOS) never widens everybody's cache.
        if ready is not None and self._advance_row(ready, 0, ready.rows[0], now):
            self._merge(ready)
        self._preempt_if_over_budget()
        if self._batch is not None:
            # Every surviving row feeds the token it just produced.
            self._decode([seq.generated[-1] for seq in self._batch.rows])

    def _choose_plain(self, batch: Batch) -> dict[int, int]:
        """The next token of every row that needs no logits processing, chosen for all of them in
        one vectorised call (row index -> token); the other rows choose in `_advance`."""
        rows = [
            i for i, seq in enumerate(batch.rows)
            if not seq.cancelled and seq.constraint is None and seq.sampler is not None and seq.choice is not None
            and seq.sampler.plain(seq.choice.count)
        ]
        if not rows:
            return {}
        logits = batch.logits if len(rows) == len(batch.rows) else batch.logits.index_select(0, torch.tensor(rows, device=self._device))
        tokens = choose_plain_rows(logits, [batch.rows[i].params.temperature for i in rows], self._rng)
        return dict(zip(rows, tokens))

    def _advance_row(self, batch: Batch, i: int, seq: Sequence, now: float, token: int | None = None) -> bool:
        """One row's next token (`token` if already chosen, else from `batch.logits[i]`); False
        when the row has left for good."""
        if seq.cancelled:
            self._retire(seq)
            return False
        if seq.deadline is not None and now > seq.deadline:
            self._retire(seq)
            seq.emit(deadline_exceeded())
            return False
        try:
            alive = self._advance(seq, batch.logits[i], token)
        except EngineError as exc:  # the request's own fault (a constraint it set): its error, alone
            log.info("request %s ended: %s", seq.request_id, exc.message)
            self._retire(seq)
            seq.emit(exc)
            return False
        except Exception as exc:  # one row's fault (a processor) is its own
            log.exception("request %s failed", seq.request_id)
            self._retire(seq)
            seq.emit(EngineError(ErrorCode.INTERNAL, f"Generation failed: {type(exc).__name__}"))
            return False
        if not alive and self._prefix is not None and not seq.cancelled:
            self._keep_prefix(batch, i, seq)
        return alive

    def _keep_prefix(self, batch: Batch, row: int, seq: Sequence) -> None:
        """Copy a finished row's KV (prompt + output but the last token) into the prefix cache."""
        assert self._prefix is not None
        length, width = int(batch.lengths[row]), batch.width
        layers = self._layers(batch.cache)
        if length < MIN_REUSE or any(layer.keys.shape[2] != width for layer in layers):  # a sliding-window layer keeps less
            return
        kept = [(layer.keys[row : row + 1, :, width - length :].clone(), layer.values[row : row + 1, :, width - length :].clone())
                for layer in layers]
        self._prefix.store(seq.context[:length], kept)

    # -- batch surgery ------------------------------------------------------------------------

    def _layers(self, cache: Any) -> list[SlabLayer]:
        return list(cache.layers)

    def _select(self, keep: list[int]) -> None:
        """Keep only rows `keep` (ascending). A row that leaves is overwritten by a kept row from
        the end of the batch, so only the moved rows' KV is copied; the rows' order changes."""
        batch = self._batch
        assert batch is not None
        if not keep:
            self._batch = None
            return
        holes, movers, order = fill_holes(keep)
        for layer in self._layers(batch.cache):
            layer.move_rows(holes, movers, len(keep))
        index = torch.tensor(order, dtype=torch.long, device=self._device)
        batch.rows = [batch.rows[i] for i in order]
        batch.mask = batch.mask.index_select(0, index)
        batch.lengths = batch.lengths.index_select(0, index)
        batch.logits = batch.logits.index_select(0, index)
        # Columns that are padding in every remaining row can go.
        used = batch.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else batch.width
        if first > 0:
            for layer in self._layers(batch.cache):
                layer.drop_left(first)
            batch.mask = batch.mask[:, first:]

    def _pad_left(self, batch: Batch, extra: int) -> None:
        if extra <= 0:
            return
        for layer in self._layers(batch.cache):
            layer.pad_left(extra)
        batch.mask = F.pad(batch.mask, (extra, 0))

    def _merge(self, new: Batch) -> None:
        if self._batch is None:
            self._batch = new
            return
        old = self._batch
        width = max(old.width, new.width)
        self._pad_left(old, width - old.width)
        self._pad_left(new, width - new.width)
        for a, b in zip(self._layers(old.cache), self._layers(new.cache)):
            a.append_rows(b.keys, b.values)
        old.rows += new.rows
        old.mask = torch.cat([old.mask, new.mask], dim=0)
        old.lengths = torch.cat([old.lengths, new.lengths], dim=0)
        old.logits = torch.cat([old.logits, new.logits], dim=0)

    def _decode(self, tokens: list[int]) -> None:
        batch = self._batch
        assert batch is not None
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self._device).unsqueeze(1)
        batch.mask = F.pad(batch.mask, (0, 1), value=1)
        positions = batch.lengths.unsqueeze(1)
        tuner = self.tuner
        if tuner is not None:
            tuner.before_step()
        started = time.perf_counter()
        batch.logits = self._forward(input_ids, batch.mask, positions, batch.cache)[:, -1]
        if tuner is not None:
            tuner.after_step(len(tokens), time.perf_counter() - started)
        batch.lengths = batch.lengths + 1

    # -- admission and prefill ----------------------------------------------------------------

    def _fits(self, rows: int, width: int) -> bool:
        return rows * width <= self.limits.kv_cache_tokens

    def _admit(self) -> None:
        admitted: list[Sequence] = []
        now = time.monotonic()
        with self._cond:
            running = (0 if self._batch is None else len(self._batch.rows)) + len(self._prefilling)
            width = 0 if self._batch is None else self._batch.width
            while self._waiting and running + len(admitted) < self.limits.max_num_seqs:
                seq = self._waiting[0]
                needed = max(width, len(seq.context))
                # The first row always fits: a lone long request must be able to run.
                if running + len(admitted) > 0 and not self._fits(running + len(admitted) + 1, needed):
                    break
                self._waiting.popleft()
                self._admissions += 1
                seq.admitted = self._admissions
                admitted.append(seq)
                width = needed
        for seq in list(admitted):
            if seq.deadline is not None and now > seq.deadline:  # never pay for a prefill nobody will wait for
                admitted.remove(seq)
                self._retire(seq)
                seq.emit(deadline_exceeded())
                continue
            if seq.choice is not None:
                continue  # a preempted row coming back keeps its state
            try:
                self._start(seq)
            except Exception as exc:
                admitted.remove(seq)
                self._retire(seq)
                seq.emit(exc if isinstance(exc, EngineError) else EngineError(ErrorCode.INTERNAL, f"Could not start: {type(exc).__name__}"))
        if not admitted:
            return
        scoring = [s for s in admitted if s.params.prompt_logprobs is not None and not s.generated]
        plain = [s for s in admitted if s not in scoring]
        for seq in list(plain):
            # A prompt that starts like a kept sequence is prefilled from that prefix; what is left
            # of it, or a long prompt, a chunk per step (short ones in one batched pass below).
            hit = self._prefix.lookup(seq.prompt_ids) if self._prefix is not None and self._prefix.tokens and not seq.generated else None
            if hit is not None or len(seq.context) > PREFILL_CHUNK:
                plain.remove(seq)
                self._prefilling.append(self._chunked(seq, *(hit or (0, []))))
        if plain:
            self._prefill(plain)
        for seq in scoring:  # these need logits at every prompt position: one at a time, in chunks
            self._scoring_prefill(seq)

    def _prefill(self, seqs: list[Sequence]) -> None:
        contexts = [s.context for s in seqs]
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long, device=self._device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=self._device)
        for row, ctx in enumerate(contexts):
            input_ids[row, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
            mask[row, width - len(ctx) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = new_cache()
        logits = self._forward(input_ids, mask, positions, cache)
        self._merge(Batch(rows=list(seqs), cache=cache, mask=mask, lengths=mask.sum(dim=1), logits=logits[:, -1]))

    def _chunked(self, seq: Sequence, length: int, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> _Prefill:
        """A chunked prefill that starts after the first `length` tokens, whose KV is `layers`."""
        cache = new_cache()
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        return _Prefill(seq, cache, length)

    def _prefill_chunk(self) -> Batch | None:
        """One chunk of the oldest chunked prefill; a prompt whose last chunk is done comes back as
        a one-row batch (its first token not yet chosen)."""
        while self._prefilling:
            job = self._prefilling[0]
            seq = job.seq
            if seq.cancelled or (seq.deadline is not None and time.monotonic() > seq.deadline):
                self._prefilling.popleft()
                self._retire(seq)
                if not seq.cancelled:
                    seq.emit(deadline_exceeded())
                continue
            context = seq.context
            # Chunks only protect running streams: with none, the rest goes in one pass (faster:
            # measured 2.5 s against 4.5 s in 256-token chunks for a lone 1,700-token prompt).
            end = min(len(context), job.done + PREFILL_CHUNK) if self._batch is not None else len(context)
            chunk = torch.tensor([context[job.done : end]], dtype=torch.long, device=self._device)
            mask = torch.ones((1, end), dtype=torch.long, device=self._device)
            positions = torch.arange(job.done, end, device=self._device).unsqueeze(0)
            logits = self._forward(chunk, mask, positions, job.cache)
            job.done = end
            if end < len(context):
                return None
            self._prefilling.popleft()
            return Batch(rows=[seq], cache=job.cache, mask=mask, lengths=torch.tensor([end], device=self._device), logits=logits[:, -1])
        return None

    def _scoring_prefill(self, seq: Sequence) -> None:
        """Prefill one prompt whose every token is scored (echo with logprobs, prompt_logprobs).

        The prompt goes through the model `SCORING_CHUNK` tokens at a time over its KV cache, so
        full-vocabulary logits exist for one chunk at a time: memory grows with what is returned
        (k alternatives per token), not with prompt length x vocabulary. Between chunks the
        request may be cancelled or run out of time."""
        assert seq.choice is not None
        params, prompt = seq.params, seq.prompt_ids
        k = params.prompt_logprobs or 0
        pieces = decode_prompt_pieces(self._tok, prompt, skip_special_tokens=params.skip_special_tokens)
        scored: list[TokenLogprob | None] = [None]
        cache = new_cache()
        last = None
        for start in range(0, len(prompt), SCORING_CHUNK):
            if seq.cancelled or (seq.deadline is not None and time.monotonic() > seq.deadline):
                self._retire(seq)
                if not seq.cancelled:
                    seq.emit(deadline_exceeded())
                return
            chunk = prompt[start : start + SCORING_CHUNK]
            end = start + len(chunk)
            input_ids = torch.tensor([chunk], dtype=torch.long, device=self._device)
            mask = torch.ones((1, end), dtype=torch.long, device=self._device)
            positions = torch.arange(start, end, device=self._device).unsqueeze(0)
            logits = self._forward(input_ids, mask, positions, cache, all_logits=True)[0]  # [chunk, vocab]
            last = logits[-1]
            # Row j predicts the token at start + j + 1: score those that are in the prompt.
            targets = prompt[start + 1 : end + 1]
            if targets:
                logprobs = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
                chosen = logprobs.gather(1, torch.tensor(targets, device=self._device).unsqueeze(1))[:, 0].tolist()
                top = torch.topk(logprobs, min(k, logprobs.shape[-1])) if k > 0 else None
                for j, token in enumerate(targets):
                    alternatives = () if top is None else tuple(
                        (i, self._token_text(i), v) for i, v in zip(top.indices[j].tolist(), top.values[j].tolist())
                    )
                    scored.append(TokenLogprob(token, pieces[start + 1 + j], chosen[j], alternatives))
            del logits
        seq.choice.prompt_logprobs = tuple(scored)
        if seq.choice.budget <= 0:  # scoring only: the prompt's logprobs, no output
            self._retire(seq, completed=True)
            seq.emit(seq.choice.end("length"))
            return
        assert last is not None
        length = len(prompt)
        self._merge(Batch(
            rows=[seq], cache=cache, mask=torch.ones((1, length), dtype=torch.long, device=self._device),
            lengths=torch.tensor([length], device=self._device), logits=last.unsqueeze(0),
        ))

    def _start(self, seq: Sequence) -> None:
        params = seq.params
        seq.choice = ChoiceState(
            self._tok,
            seq.prompt_ids,
            params,
            eos_token_ids=self._eos,
            budget=output_budget(params, len(seq.prompt_ids), self._max_model_len),
        )
        seq.sampler = SequenceSampler(
            params,
            vocab_size=self._vocab_size,
            prompt_ids=seq.prompt_ids,
            blocked_until_min=set(params.stop_token_ids) | (set() if params.ignore_eos else set(self._eos)),
            device=self._device,
        )
        seq.constraint = self._grammars.constraint(params.structured) if params.structured else None

    def _preempt_if_over_budget(self) -> None:
        """Before a decode step widens the cache: if it would not fit, send the newest rows back."""
        batch = self._batch
        while batch is not None and len(batch.rows) > 1 and not self._fits(len(batch.rows), batch.width + 1):
            newest = max(range(len(batch.rows)), key=lambda i: batch.rows[i].admitted)
            victim = batch.rows[newest]
            self._select([i for i in range(len(batch.rows)) if i != newest])
            batch = self._batch
            victim.preempted += 1
            with self._cond:
                self.preempted_total += 1
                self._waiting.appendleft(victim)

    # -- one token for one row ----------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self._tok.decode([token], skip_special_tokens=False)
        return text

    def _alternatives(self, logprobs: torch.Tensor, k: int) -> tuple[tuple[int, str, float], ...]:
        return tuple((i, self._token_text(i), lp) for i, lp in top_logprobs(logprobs, k))

    def _advance(self, seq: Sequence, logits: torch.Tensor, token: int | None = None) -> bool:
        """Pick (unless `token` was chosen with the batch), record and emit this row's next token;
        False when the row is done."""
        params = seq.params
        choice, sampler, constraint = seq.choice, seq.sampler, seq.constraint
        assert choice is not None and sampler is not None
        if token is None:
            processed = sampler.process(logits, choice.count, constraint.apply if constraint else None)
            token = sampler.choose(processed)
        sampler.observe(token)
        if constraint is not None:
            constraint.advance(token)
        seq.generated.append(token)

        logprob = None
        if params.logprobs is not None:
            raw = torch.log_softmax(logits.float(), dim=-1)
            logprob = (float(raw[token]), self._alternatives(raw, params.logprobs))
        delta = choice.step(token, logprob, grammar_done=constraint is not None and constraint.finished)
        if choice.finished:
            self._retire(seq, completed=True)
        seq.emit(delta)
        return not choice.finished
