"""vLLM's tokenizer utilities: /tokenize (prompt or chat form) and /detokenize.

The chat form runs the very code chat completions uses to build its prompt, so `count` equals
the `prompt_tokens` a /chat/completions request with the same messages reports.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError, model_validator

from engines.tasks import Task
from gateway.openai.errors import from_validation_errors
from gateway.openai.protocol import ChatCompletionRequest, _Tolerant
from gateway.openai.services.chat import ChatService
from gateway.openai.services.common import ServiceBase
from gateway.openai.services.tools import plan_tools


class TokenizeRequest(ChatCompletionRequest):
    """Either `prompt` (completion form) or `messages` (chat form), as vLLM accepts them."""

    messages: list[Any] | None = None  # type: ignore[assignment]
    prompt: str | None = None
    add_special_tokens: bool | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self


class DetokenizeRequest(_Tolerant):
    model: str | None = None
    tokens: list[int]


class TokenizeService(ServiceBase):
    def __init__(self, chat: ChatService) -> None:
        super().__init__(chat.engine, chat.config)
        self.chat = chat

    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        self.resolve_model(req.model)
        tok = self.engine.tokenizer
        if req.prompt is not None:
            add = True if req.add_special_tokens is None else req.add_special_tokens
            ids = await asyncio.to_thread(tok.encode, req.prompt, add_special_tokens=add)
        else:
            self.require_task(Task.text_generation)
            try:
                chat_req = ChatCompletionRequest.model_validate(
                    {**req.model_dump(exclude={"prompt", "return_token_strs"}), "add_special_tokens": bool(req.add_special_tokens)}
                )
            except ValidationError as exc:  # the chat form's own rules, checked here: a 400 like any other
                raise from_validation_errors(exc.errors()) from None
            tools = plan_tools(chat_req)
            _, ids = await self.chat.prompt_ids(chat_req, tools.template_tools)
        strs = await asyncio.to_thread(tok.convert_ids_to_tokens, ids) if req.return_token_strs else None
        return {"count": len(ids), "max_model_len": self.engine.capabilities.max_model_len, "tokens": ids, "token_strs": strs}

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        self.resolve_model(req.model)
        self.check_token_ids([req.tokens], "tokens")
        text = await asyncio.to_thread(self.engine.tokenizer.decode, req.tokens, skip_special_tokens=False)
        return {"prompt": text}
