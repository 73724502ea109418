"""Text completions: prompts -> token ids -> n choices per prompt -> response or chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from engines.tasks import Task
from gateway.openai.errors import invalid, unsupported
from gateway.openai.protocol import (
    CompletionRequest,
    check_unsupported,
    max_tokens_param,
    structured_output,
    to_generation_params,
)
from gateway.openai.services.common import (
    Collected,
    Generation,
    Prepared,
    ServiceBase,
    collect_all,
    merged,
    new_id,
    now,
    seeded,
    stream_usage_options,
    text_or_token_lists,
    usage_of,
)
from gateway.openai.services.logprobs import CompletionLogprobs, merge_blocks
from gateway.usage import UsageTracker

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions


@dataclass
class CompletionPlan:
    prepared: Prepared
    prompt_texts: list[str]  # per prompt: what echo prepends and text_offset counts from
    n: int
    best_of: int
    echo: bool
    logprobs: int | None  # what the client asked for (None: no logprobs in the response)


class CompletionService(ServiceBase):
    def _encode(self, prompts: list[str | list[int]], add_special_tokens: bool) -> list[list[int]]:
        tok = self.engine.tokenizer
        return [tok.encode(p, add_special_tokens=add_special_tokens) if isinstance(p, str) else [int(t) for t in p] for p in prompts]

    async def plan(self, req: CompletionRequest) -> CompletionPlan:
        model = self.resolve_model(req.model)
        self.require_task(Task.text_generation)
        check_unsupported(req)
        prompts = text_or_token_lists(req.prompt, "prompt")
        n = self.check_n(req.n)
        best_of = self.check_n(req.best_of if req.best_of is not None else n, "best_of")
        if best_of < n:
            raise invalid(f"`best_of` ({best_of}) must be at least `n` ({n}).", "best_of")
        if req.stream and best_of > n:
            raise unsupported("best_of", "it cannot be combined with stream=true unless it equals n")
        logprobs = self.check_logprobs(req.logprobs, "logprobs")
        echo = bool(req.echo)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        scoring = echo and max_tokens == 0
        params = to_generation_params(
            req,
            defaults=self.config.defaults,
            default_max_tokens=DEFAULT_MAX_TOKENS,
            # best_of ranks candidates by mean logprob, so it needs them even if the client does not.
            logprobs=logprobs if logprobs is not None else (0 if best_of > n else None),
            prompt_logprobs=logprobs if echo and logprobs is not None else (0 if scoring else None),
            structured=structured_output(req),
            allow_zero_max_tokens=echo,
        )
        params = self.with_adapter(params, model)
        self.check_token_ids([p for p in prompts if not isinstance(p, str)], "prompt")
        ids = await asyncio.to_thread(self._encode, prompts, req.add_special_tokens)
        ids = [self.truncate(p, req.truncate_prompt_tokens) for p in ids]
        if any(not p for p in ids):
            raise invalid("A prompt produced no tokens.", "prompt")
        texts = [
            p if isinstance(p, str) else await asyncio.to_thread(self.engine.tokenizer.decode, p, skip_special_tokens=False)
            for p in prompts
        ]
        if req.truncate_prompt_tokens is not None:
            texts = [await asyncio.to_thread(self.engine.tokenizer.decode, p, skip_special_tokens=False) for p in ids]

        # Completions count alternatives in `logprobs` and score the prompt when asked to `echo` it.
        rename = {"max_tokens": max_tokens_param(req), "top_logprobs": "logprobs", "prompt_logprobs": "echo"}
        admission = await self.admit(ids, params, best_of, rename=rename)
        response_id = new_id("cmpl")
        self.log_request(response_id, texts[0] if len(texts) == 1 else str(texts), params)
        generations = [
            Generation(self.engine, p, seeded(params, j), f"{response_id}-{pi}-{j}", index=pi * n + j, prompt_index=pi, rename=rename,
                       admission=admission)
            for pi, p in enumerate(ids)
            for j in range(best_of)
        ]
        include_usage, continuous = stream_usage_options(req.stream_options)
        prepared = Prepared(
            id=response_id,
            chunk_object="text_completion",
            created=now(),
            model=model,
            fingerprint=self.fingerprint,
            generations=generations,
            include_usage=include_usage,
            continuous_usage=continuous,
            usage=UsageTracker(chat=False),
        )
        return CompletionPlan(prepared, texts, n, best_of, echo, logprobs)

    # -- non-streaming ------------------------------------------------------------------------

    def _choice(self, plan: CompletionPlan, r: Collected, index: int) -> dict[str, Any]:
        prompt_text = plan.prompt_texts[r.generation.prompt_index]
        text = prompt_text + r.text if plan.echo else r.text
        logprobs = None
        if plan.logprobs is not None:
            acc = CompletionLogprobs(0 if plan.echo else len(prompt_text), plan.logprobs)
            block = None
            if plan.echo and r.prompt_logprobs is not None:
                first = prompt_text[: len(prompt_text) - sum(len(i.text) for i in r.prompt_logprobs[1:] if i)]
                block = acc.prompt_block(r.prompt_logprobs, first)
            logprobs = merge_blocks(block, acc.block(r.logprobs))
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": r.finish_reason,
            "stop_reason": r.stop_reason,
        }

    async def complete(self, req: CompletionRequest) -> dict[str, Any]:
        plan = await self.plan(req)
        p = plan.prepared
        results = await collect_all(p.generations)
        choices: list[dict[str, Any]] = []
        for pi in range(len(plan.prompt_texts)):
            candidates = [r for r in results if r.generation.prompt_index == pi]
            if plan.best_of > plan.n:  # keep the n candidates with the best mean token logprob
                candidates = sorted(candidates, key=lambda r: r.mean_logprob, reverse=True)[: plan.n]
            choices += [self._choice(plan, r, pi * plan.n + j) for j, r in enumerate(candidates)]
        return p.response("text_completion", choices, usage_of(results, chat=False))

    # -- streaming ----------------------------------------------------------------------------

    async def stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        plan = await self.plan(req)
        p = plan.prepared
        started: set[int] = set()
        offsets: dict[int, CompletionLogprobs] = {}
        async for gen, d in merged(p.generations):
            p.usage.observe(d, choice=gen.index, prompt=gen.prompt_index)
            text, logprobs = d.text, None
            prompt_text = plan.prompt_texts[gen.prompt_index]
            if plan.logprobs is not None:
                acc = offsets.setdefault(gen.index, CompletionLogprobs(0 if plan.echo else len(prompt_text), plan.logprobs))
                block = None
                if plan.echo and gen.index not in started and d.prompt_logprobs is not None:
                    first = prompt_text[: len(prompt_text) - sum(len(i.text) for i in d.prompt_logprobs[1:] if i)]
                    block = acc.prompt_block(d.prompt_logprobs, first)
                logprobs = merge_blocks(block, acc.block(d.logprobs))
            if plan.echo and gen.index not in started:
                text = prompt_text + text
            started.add(gen.index)
            if text or d.finish_reason is not None or (logprobs and logprobs["tokens"]):
                choice = {"index": gen.index, "text": text, "logprobs": logprobs, "finish_reason": d.finish_reason}
                yield p.chunk(choice, index=gen.index, prompt_index=gen.prompt_index)
        if p.include_usage:
            yield p.usage_chunk()
