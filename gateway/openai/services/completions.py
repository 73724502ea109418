"""Text completions: prompt -> token ids -> engine -> response or chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.openai.errors import invalid, unsupported
from gateway.openai.protocol import CompletionRequest, check_unsupported, max_tokens_param, to_generation_params
from gateway.openai.services.common import Generation, ServiceBase, collect, new_id, now
from gateway.usage import UsageTracker

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions


@dataclass
class PreparedCompletion:
    id: str
    created: int
    model: str
    generation: Generation
    include_usage: bool
    continuous_usage: bool


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

    async def prepare(self, req: CompletionRequest) -> PreparedCompletion:
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
        opts = req.stream_options
        include_usage = bool(opts and opts.include_usage)
        return PreparedCompletion(
            id=response_id,
            created=now(),
            model=model,
            generation=Generation(
                self.engine, prompt_ids, params, response_id, rename={"max_tokens": max_tokens_param(req)}
            ),
            include_usage=include_usage,
            continuous_usage=include_usage and bool(opts and opts.continuous_usage_stats),
        )

    async def complete(self, req: CompletionRequest) -> dict[str, Any]:
        p = await self.prepare(req)
        result = await collect(p.generation, chat=False)
        return {
            "id": p.id,
            "object": "text_completion",
            "created": p.created,
            "model": p.model,
            "system_fingerprint": self.fingerprint,
            "choices": [
                {
                    "index": 0,
                    "text": result.text,
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                    "stop_reason": result.stop_reason,
                }
            ],
            "usage": result.usage,
        }

    async def stream(self, req: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        p = await self.prepare(req)
        usage = UsageTracker(chat=False)

        def chunk(text: str, finish_reason: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": p.id,
                "object": "text_completion",
                "created": p.created,
                "model": p.model,
                "system_fingerprint": self.fingerprint,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
            }
            if p.continuous_usage:
                body["usage"] = usage.choice_usage()
            elif p.include_usage:
                body["usage"] = None
            return body

        async for d in p.generation.deltas():
            usage.observe(d)
            if d.text or d.finish_reason is not None:
                yield chunk(d.text, d.finish_reason)
        if p.include_usage:
            yield {
                "id": p.id,
                "object": "text_completion",
                "created": p.created,
                "model": p.model,
                "system_fingerprint": self.fingerprint,
                "choices": [],
                "usage": usage.usage(),
            }
