"""Chat completions: messages -> chat template -> token ids -> engine -> response or chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gateway.openai.errors import invalid, unsupported
from gateway.openai.protocol import (
    CHAT_ROLES,
    ChatCompletionRequest,
    ChatMessage,
    check_unsupported,
    max_tokens_param,
    to_generation_params,
)
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


class ChatService(ServiceBase):
    # -- prompt building ----------------------------------------------------------------------

    def _template_messages(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        if not messages:
            raise invalid("`messages` must contain at least one message.", "messages")
        keep_developer = self.engine.tokenizer.template_knows_developer_role
        out: list[dict[str, Any]] = []
        for i, msg in enumerate(messages):
            if msg.role not in CHAT_ROLES:
                if msg.role in ("tool", "function"):
                    raise unsupported(f"messages[{i}].role", f"'{msg.role}' messages arrive with tool support")
                raise invalid(
                    f"Invalid role '{msg.role}' in messages[{i}]; expected one of {', '.join(CHAT_ROLES)}.",
                    f"messages[{i}].role",
                )
            if msg.tool_calls:
                raise unsupported(f"messages[{i}].tool_calls")
            role = msg.role if msg.role != "developer" or keep_developer else "system"
            out.append({"role": role, "content": self._content_text(i, msg)})
        return out

    @staticmethod
    def _content_text(i: int, msg: ChatMessage) -> str:
        content = msg.content
        if content is None:
            if msg.role == "assistant":
                return ""
            raise invalid(f"messages[{i}].content is required for role '{msg.role}'.", f"messages[{i}].content")
        if isinstance(content, str):
            return content
        texts: list[str] = []
        for j, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise invalid(
                    f"Content part type '{part.type}' is not supported by this text-only model; "
                    "send parts of type 'text' with a 'text' field.",
                    f"messages[{i}].content[{j}]",
                    code="unsupported_value",
                )
            texts.append(part.text)
        return "\n".join(texts)

    def _render(self, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        tok = self.engine.tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
        # The template already holds BOS and friends: do not add special tokens again.
        return text, tok.encode(text, add_special_tokens=False)

    async def prepare(self, req: ChatCompletionRequest) -> Prepared:
        model = self.resolve_model(req.model)
        check_unsupported(req)
        messages = self._template_messages(req.messages)
        # Template rendering and tokenization are CPU work: keep them off the event loop.
        # Template errors arrive as EngineError(reason="template_error") and map to a 400.
        text, prompt_ids = await asyncio.to_thread(self._render, messages)
        caps = self.engine.capabilities
        default_max = caps.max_model_len - len(prompt_ids)
        if self.config.defaults.max_output_tokens is not None:
            default_max = min(default_max, self.config.defaults.max_output_tokens)
        params = to_generation_params(req, defaults=self.config.defaults, default_max_tokens=max(default_max, 1))
        response_id = new_id("chatcmpl")
        self.log_request(response_id, text, params)
        include_usage, continuous = stream_usage_options(req.stream_options)
        return Prepared(
            id=response_id,
            chunk_object="chat.completion.chunk",
            created=now(),
            model=model,
            fingerprint=self.fingerprint,
            generation=Generation(
                self.engine,
                prompt_ids,
                params,
                response_id,
                rename={"prompt": "messages", "max_tokens": max_tokens_param(req)},
            ),
            include_usage=include_usage,
            continuous_usage=continuous,
            usage=UsageTracker(chat=True),
        )

    # -- responses ----------------------------------------------------------------------------

    async def complete(self, req: ChatCompletionRequest) -> dict[str, Any]:
        p = await self.prepare(req)
        result = await collect(p)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": result.finish_reason,
            "stop_reason": result.stop_reason,
        }
        return p.response("chat.completion", choice, result.usage)

    async def stream(self, req: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Chunks as the spec orders them: role with the first token, no empty deltas,
        finish_reason on the last content chunk, usage chunk only when asked."""
        p = await self.prepare(req)

        def choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        first = True
        async for d in p.generation.deltas():
            p.usage.observe(d)
            if first:
                first = False
                yield p.chunk(choice({"role": "assistant", "content": ""}, None))
            if d.text:
                yield p.chunk(choice({"content": d.text}, d.finish_reason))
            elif d.finish_reason is not None:
                yield p.chunk(choice({}, d.finish_reason))
        if p.include_usage:
            yield p.usage_chunk()
