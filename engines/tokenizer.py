"""A small, engine-neutral view of a Hugging Face tokenizer: encode, decode, chat templates.

Every method is synchronous CPU work; callers on an event loop run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from engines.errors import EngineError, ErrorCode


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

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render messages to a prompt string. Template failures are the client's: 400."""
        template = chat_template or self.chat_template
        if template is None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                "This model has no chat template, so chat completions are not available; "
                "use /completions with a plain prompt instead.",
                param="messages",
                reason="template_error",
            )
        try:
            rendered = self.hf.apply_chat_template(
                messages,
                chat_template=template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **template_kwargs,
            )
        except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"The chat template could not render these messages: {exc}",
                param="messages",
                reason="template_error",
            ) from None
        if not isinstance(rendered, str):  # some versions return a list for batched input
            rendered = rendered[0]
        return rendered
