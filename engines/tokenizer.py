"""A small, engine-neutral view of a Hugging Face tokenizer: encode, decode, chat templates.

Every method is synchronous CPU work; callers on an event loop run it in a worker thread. Chat
templates render in worker processes (`engines.template_pool`), with time, memory and output
bounds; `render_chat` waits for them without tying up a thread of the default executor.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from engines.errors import EngineError, ErrorCode
from engines.template_pool import TemplateLimits, TemplatePool


class Tokenizer:
    def __init__(self, hf_tokenizer: Any, *, eos_token_ids: Sequence[int] = ()) -> None:
        self.hf = hf_tokenizer
        ids = set(eos_token_ids)
        if hf_tokenizer.eos_token_id is not None:
            ids.add(int(hf_tokenizer.eos_token_id))
        self.eos_token_ids: frozenset[int] = frozenset(ids)
        self.vocab_size: int = len(hf_tokenizer)
        self.all_special_ids: frozenset[int] = frozenset(hf_tokenizer.all_special_ids)
        template = hf_tokenizer.chat_template
        self.chat_template: str | None = template if isinstance(template, str) else None
        # The variables every chat template sees (bos_token, eos_token, ...).
        self.special_tokens: dict[str, Any] = {
            k: v for k, v in (getattr(hf_tokenizer, "special_tokens_map", None) or {}).items() if isinstance(v, (str, list))
        }
        self._template_limits = TemplateLimits()
        self._templates: dict[bool, TemplatePool] = {}  # by "the request brought the template"
        self._template_lock = threading.Lock()

    # -- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def offsets(self, text: str, *, add_special_tokens: bool = True) -> list[tuple[int, int]]:
        """Character span of every token (fast tokenizers only; special tokens get (0, 0))."""
        if not getattr(self.hf, "is_fast", False):
            raise EngineError(ErrorCode.UNSUPPORTED, "Offsets need a fast tokenizer; this model has a slow one.")
        spans = self.hf(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)["offset_mapping"]
        return [(int(a), int(b)) for a, b in spans]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.hf.convert_ids_to_tokens(list(ids)))

    # -- chat ----------------------------------------------------------------------------------

    @property
    def template_knows_developer_role(self) -> bool:
        return self.chat_template is not None and "developer" in self.chat_template

    def configure_templates(self, limits: TemplateLimits) -> None:
        """The bounds of chat-template rendering (the operator's flags). Pools started under other
        bounds are replaced on their next use."""
        if limits != self._template_limits:
            self._template_limits = limits
            self.close()

    def templates(self, *, request_template: bool = False) -> TemplatePool:
        """The worker processes that render chat templates, started on first use. Templates that
        requests bring have workers of their own, so they never hold up the model's template."""
        with self._template_lock:
            pool = self._templates.get(request_template)
            if pool is None:
                pool = self._templates[request_template] = TemplatePool(self.chat_template, self.special_tokens, self._template_limits)
            return pool

    def close(self) -> None:
        with self._template_lock:
            pools, self._templates = list(self._templates.values()), {}
        for pool in pools:
            pool.close()

    def _template_request(self, chat_template: str | None) -> None:
        if chat_template is None and self.chat_template is None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                "This model has no chat template, so chat completions are not available; "
                "use /completions with a plain prompt instead.",
                param="messages",
                reason="template_error",
            )

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template: str | None = None,
        tools: list[Any] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render messages to a prompt string, bounded (blocking: see `render_chat`).
        Template failures are the client's: EngineError(INVALID_REQUEST, reason="template_error")."""
        self._template_request(chat_template)
        return self.templates(request_template=chat_template is not None).render(
            messages, template=chat_template, tools=tools, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, kwargs=template_kwargs,
        )

    async def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template: str | None = None,
        tools: list[Any] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """`apply_chat_template` for the event loop: waits on the template pool's own threads."""
        self._template_request(chat_template)
        return await self.templates(request_template=chat_template is not None).render_async(
            messages, template=chat_template, tools=tools, add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message, kwargs=template_kwargs,
        )
