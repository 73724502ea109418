"""Text completions: prompt -> token ids -> engine -> response or chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gateway.openai.errors import invalid, unsupported
from gateway.openai.protocol import CompletionRequest, check_unsupported, max_tokens_param, to_generation_params
from gateway.openai.services.common import (
    Generation,
    Prepared,
    ServiceBase,
    collect,
    new_id,
    now,
    stream_usage_options,
)
from gateway.usage import UsageTracker

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions


class CompletionService(ServiceBase):
    def _single_prompt(self, prompt: Any) -> str | list[int]:
        """One prompt, as a string or as token ids. Several prompts arrive with `n` support."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise unsupported("prompt", "only one prompt per request is supported yet")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if prompt == "":
                raise invalid("The prompt must not be empty.", "prompt")
            return prompt
        if not prompt:
            raise invalid("The prompt must contain at least one token.", "prompt")
        return [int(t) for t in prompt]

    async def prepare(self, req: CompletionRequest) -> Prepared:
        model = self.resolve_model(req.model)
        check_unsupported(req)
        prompt = self._single_prompt(req.prompt)
        params = to_generation_params(req, defaults=self.config.defaults, default_max_tokens=DEFAULT_MAX_TOKENS)
        if isinstance(prompt, str):
            prompt_ids = await asyncio.to_thread(
                self.engine.tokenizer.encode, prompt, add_special_tokens=req.add_special_tokens
            )
            if not prompt_ids:
                raise invalid("The prompt produced no tokens.", "prompt")
        else:
            prompt_ids = prompt
        response_id = new_id("cmpl")
        self.log_request(response_id, prompt, params)
        include_usage, continuous = stream_usage_options(req.stream_options)
        return Prepared(
            id=response_id,
            chunk_object="text_completion",
            created=now(),
            model=model,
            fingerprint=self.fingerprint,
            generation=Generation(
                self.engine, prompt_ids, params, response_id, rename={"max_tokens": max_tokens_param(req)}
            ),
            include_usage=include_usage,
            continuous_usage=continuous,
            usage=UsageTracker(chat=False),
        )

    async def complete(self, req: CompletionRequest) -> dict[str, Any]:
        p = await self.prepare(req)
        result = await collect(p)
        choice = {
            "index": 0,
            "text": result.text,
            "logprobs": None,
            "finish_reason": result.finish_reason,
            "stop_reason": result.stop_reason,
        }
        return p.response("text_completion", choice, result.usage)

    async def stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        p = await self.prepare(req)
        async for d in p.generation.deltas():
            p.usage.observe(d)
            if d.text or d.finish_reason is not None:
                yield p.chunk({"index": 0, "text": d.text, "logprobs": None, "finish_reason": d.finish_reason})
        if p.include_usage:
            yield p.usage_chunk()
