"""VLLMEngine: the backend over vLLM's `AsyncLLM` (the frontend, `engines.frontend`, has already
tokenized, validated and admitted every part it submits).

vLLM samples (its scheduler, paged KV cache, kernels, structured-output backends, seeds,
penalties); we own everything a client sees. vLLM is asked for token ids only
(`detokenize=False`, no stop strings): each id goes through the same `ChoiceState` as in the
transformers engine, so text, stop strings, `min_tokens`, finish reasons, logprob items and usage
are exactly those of the other engine. When a stop string ends a choice, the vLLM request is
aborted at once.

`AsyncLLM` is bound to the event loop it first runs on, and our faces run on more than one loop
(uvicorn's, the gRPC server's, a test's). So it lives on a private event loop in its own thread,
like the transformers engine's scheduler thread: requests cross over with
`run_coroutine_threadsafe`, deltas come back with `call_soon_threadsafe`, and the serving loop
never runs vLLM's output processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from engines.choice import ChoiceState, LogprobEntry, merge_deltas, output_budget
from engines.detokenizer import decode_prompt_pieces
from engines.errors import EngineError, ErrorCode, deadline_exceeded
from engines.backend import LoadedBackend
from engines.loader import LoadedModel
from engines.structured import ConstraintFailed, GrammarCompiler
from engines.tasks import Task
from engines.types import (
    EmbeddingResult,
    GenerationParams,
    RequestContext,
    TokenLogprob,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class _LoopThread:
    """A private asyncio loop on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


def _engine_error(exc: BaseException) -> EngineError:
    """vLLM's exceptions in our neutral taxonomy."""
    if isinstance(exc, EngineError):
        return exc
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMNotFoundError
    from vllm.v1.engine.exceptions import EngineDeadError

    cause = exc.__cause__ or exc
    if isinstance(exc, VLLMNotFoundError):
        return EngineError(ErrorCode.NOT_FOUND, str(exc), param="model")
    if isinstance(exc, VLLMClientError) or isinstance(cause, (ValueError, VLLMClientError)):
        return EngineError(ErrorCode.INVALID_REQUEST, str(cause))
    if isinstance(exc, GracefulHTTPError):
        return EngineError(ErrorCode.OVERLOADED, str(exc))
    if isinstance(exc, EngineDeadError):
        return EngineError(ErrorCode.UNAVAILABLE, "The vLLM engine is not running.")
    log.error("vLLM request failed: %s: %s", type(cause).__name__, cause)
    return EngineError(ErrorCode.INTERNAL, f"The engine failed: {type(cause).__name__}")


class VLLMEngine(LoadedBackend):
    """Generation (decoder models) or embeddings (pooling models) on vLLM; the encoder heads are
    served by transformers."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        served_name: str,
        engine_args: Any,
        lora_modules: Sequence[tuple[str, str]] = (),
        max_num_seqs: int = 32,
        max_waiting: int = 256,
    ) -> None:
        extra: dict[str, Any] = {"adapters": [name for name, _ in lora_modules]}
        if loaded.task is Task.text_embedding and loaded.pooling is not None:
            # vLLM reads the same sentence-transformers files for its pooler.
            extra.update(pooling=loaded.pooling.mode, normalize=loaded.pooling.normalize, dimensions=int(loaded.config.hidden_size))
        super().__init__(loaded, served_name=served_name, extra=extra)
        self._capabilities = dataclasses.replace(self._capabilities, engine="vllm")
        self._engine_args = engine_args
        self._eos = frozenset(loaded.eos_token_ids) | self._tokenizer.eos_token_ids
        self.grammars = GrammarCompiler(loaded.hf_tokenizer, int(getattr(loaded.config, "vocab_size", 0) or self._tokenizer.vocab_size))
        self._loras = {name: (i + 1, path) for i, (name, path) in enumerate(lora_modules)}
        self.max_in_flight = max_num_seqs + max_waiting
        self._llm: Any = None
        self._thread: _LoopThread | None = None
        self._ids = itertools.count()
        self._parts: dict[str, tuple[str, Future[None]]] = {}  # our request id -> (vLLM's id, its driver)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._llm is not None:
            return
        self._thread = _LoopThread("vllm-engine")
        self._llm = await self._thread.call(self._create())

    async def _create(self) -> Any:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(self._engine_args, usage_context=UsageContext.OPENAI_API_SERVER)

    async def stop(self) -> None:
        llm, thread = self._llm, self._thread
        self._llm = None
        if llm is not None and thread is not None:
            await thread.call(self._shutdown(llm))
        if thread is not None:
            thread.close()

    @staticmethod
    async def _shutdown(llm: Any) -> None:
        """On the engine loop: stop reading engine outputs first, so that the engine process going
        away is not reported as an engine failure, then shut vLLM down."""
        handler = getattr(llm, "output_handler", None)
        if handler is not None and not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        llm.shutdown()

    async def check_health(self) -> bool:
        if self._llm is None or self._thread is None or self._llm.errored:
            return False
        try:
            await self._thread.call(self._llm.check_health())
        except Exception:
            return False
        return True

    def stats(self) -> dict[str, int]:
        llm = self._llm
        parts = len(self._parts)
        queued = max(0, parts - int(self._engine_args.max_num_seqs or 0))
        return {
            "running": parts - queued,
            "waiting": queued,
            "engine_unfinished": 0 if llm is None else int(llm.get_num_unfinished_requests()),
        }

    def abort(self, request_id: str) -> None:
        """Stop one part: its driver and the vLLM request (nothing more is emitted for it)."""
        entry = self._parts.pop(request_id, None)
        if entry is not None and self._thread is not None and self._llm is not None:
            vllm_id, driver = entry
            driver.cancel()
            self._thread.submit(self._llm.abort(vllm_id))

    # -- generation -----------------------------------------------------------------------------

    def _require_llm(self) -> tuple[Any, _LoopThread]:
        if self._llm is None or self._thread is None:
            raise EngineError(ErrorCode.UNAVAILABLE, "The vLLM engine is not running.")
        return self._llm, self._thread

    def unsupported(self, params: GenerationParams) -> str | None:
        return None

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id, path = self._loras[adapter]
        return LoRARequest(lora_name=adapter, lora_int_id=lora_id, lora_path=path)

    def _sampling_params(self, params: GenerationParams, budget: int) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        structured = None
        if params.structured is not None:
            kind, value = params.structured.kind, params.structured.value
            structured = StructuredOutputsParams(
                **({"json": value} if kind == "json_schema" else {"regex": value} if kind == "regex" else {"grammar": value})
            )
        return SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            repetition_penalty=params.repetition_penalty,
            logit_bias=dict(params.logit_bias) or None,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
            min_tokens=min(params.min_tokens, max(budget, 1)),
            max_tokens=max(budget, 1),  # a scoring request (budget 0) still makes one token; it is dropped
            logprobs=params.logprobs,
            prompt_logprobs=params.prompt_logprobs,
            structured_outputs=structured,
            detokenize=False,
            skip_special_tokens=params.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
        )

    def submit(self, request_id: str, prompt_ids: list[int], params: GenerationParams, deadline: float | None, emit: Any) -> None:
        llm, thread = self._require_llm()
        budget = output_budget(params, len(prompt_ids), self._capabilities.max_model_len)
        sampling = self._sampling_params(params, budget)
        lora = self._lora_request(params.adapter)
        vllm_id = f"{request_id}#{next(self._ids)}"

        def done(_: Any) -> None:  # on the engine loop's thread
            if self._parts.get(request_id, ("",))[0] == vllm_id:
                self._parts.pop(request_id, None)

        driver = thread.submit(self._run(llm, vllm_id, prompt_ids, params, budget, sampling, lora, deadline, emit))
        self._parts[request_id] = (vllm_id, driver)
        driver.add_done_callback(done)  # runs at once if the driver has already finished

    async def _run(
        self,
        llm: Any,
        vllm_id: str,
        prompt_ids: list[int],
        params: GenerationParams,
        budget: int,
        sampling: Any,
        lora: Any,
        deadline: float | None,
        emit: Any,
    ) -> None:
        """On the engine loop: drive one vLLM request, turn its token ids into our deltas."""
        choice = ChoiceState(self._tokenizer, prompt_ids, params, eos_token_ids=self._eos, budget=budget)
        # Our own matcher follows vLLM's tokens to see when the grammar is complete: the choice
        # ends there, as in the transformers engine, instead of on a forced EOS one step later.
        constraint = self.grammars.constraint(params.structured) if params.structured is not None else None
        first = True
        try:
            async for out in llm.generate({"prompt_token_ids": prompt_ids}, sampling, vllm_id, lora_request=lora):
                if first:
                    first = False
                    if params.prompt_logprobs is not None:
                        choice.prompt_logprobs = self._prompt_logprobs(prompt_ids, out.prompt_logprobs, params)
                    if budget <= 0:  # scoring only: the prompt's logprobs, no output
                        emit(choice.end("length"))
                        return
                if deadline is not None and time.monotonic() > deadline:
                    emit(deadline_exceeded())
                    return
                completion = out.outputs[0]
                deltas = []
                for i, token in enumerate(completion.token_ids):
                    entry = self._logprob_entry(completion.logprobs[i], token, params.logprobs) if params.logprobs is not None and completion.logprobs else None
                    grammar_done = False
                    if constraint is not None and token not in self._eos:
                        try:
                            constraint.advance(token)
                            grammar_done = constraint.finished
                        except ConstraintFailed:  # vLLM's matcher disagreed: leave the ending to vLLM
                            constraint = None
                    deltas.append(choice.step(token, entry, grammar_done=grammar_done))
                    if choice.finished:
                        break
                if not choice.finished and out.finished:
                    if completion.finish_reason == "abort":  # abort(request_id), not our own stop
                        emit(EngineError(ErrorCode.UNAVAILABLE, "The request was aborted."))
                        return
                    deltas.append(choice.end("stop" if completion.finish_reason == "stop" else "length"))
                if deltas:
                    emit(merge_deltas(deltas))
                if choice.finished:
                    return
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the requester
            emit(_engine_error(exc))

    def _logprob_entry(self, ranked: dict[int, Any], token: int, k: int) -> LogprobEntry:
        """vLLM's {id: Logprob(logprob, rank)} for one position as (chosen logprob, top k)."""
        top = sorted(((lp.rank, tid, lp.logprob) for tid, lp in ranked.items() if lp.rank is not None and lp.rank <= k))
        decode = self._tokenizer.decode
        alternatives = tuple((tid, decode([tid], skip_special_tokens=False), float(lp)) for _, tid, lp in top)
        return float(ranked[token].logprob), alternatives

    def _prompt_logprobs(self, prompt_ids: list[int], ranked: list[dict[int, Any] | None] | None, params: GenerationParams) -> tuple[TokenLogprob | None, ...]:
        pieces = decode_prompt_pieces(self._tokenizer, prompt_ids, skip_special_tokens=params.skip_special_tokens)
        k = params.prompt_logprobs or 0
        out: list[TokenLogprob | None] = [None]
        for pos in range(1, len(prompt_ids)):
            position = ranked[pos] if ranked is not None and pos < len(ranked) else None
            if not position:
                out.append(None)
                continue
            logprob, top = self._logprob_entry(position, prompt_ids[pos], k)
            out.append(TokenLogprob(prompt_ids[pos], pieces[pos], logprob, top))
        return tuple(out)

    # -- pooling --------------------------------------------------------------------------------

    async def embed(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[EmbeddingResult]:
        llm, thread = self._require_llm()
        try:
            vectors = await thread.call(self._embed_all(llm, [list(map(int, ids)) for ids in inputs], ctx.request_id))
        except EngineError:
            raise
        except Exception as exc:
            raise _engine_error(exc) from None
        return [EmbeddingResult(tuple(v), len(ids)) for v, ids in zip(vectors, inputs)]

    async def _embed_all(self, llm: Any, inputs: list[list[int]], request_id: str) -> list[list[float]]:
        from vllm.pooling_params import PoolingParams

        async def one(i: int, ids: list[int]) -> list[float]:
            final = None
            async for out in llm.encode({"prompt_token_ids": ids}, PoolingParams(task="embed"), f"{request_id}#{i}"):
                final = out
            assert final is not None
            return [float(x) for x in final.outputs.data.tolist()]

        return list(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(inputs))))
