"""The two OpenAI logprobs shapes, built from the engine's TokenLogprob items.

Completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}, where
text_offset is each token's character offset in prompt + completion (OpenAI semantics, even
without echo) and continues across stream chunks. Chat: {"content": [{token, logprob, bytes,
top_logprobs: [{token, logprob, bytes}]}]}. Logprobs are clamped to -9999.0 (JSON has no -inf).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.types import TokenLogprob

FLOOR = -9999.0


def _lp(value: float) -> float:
    return max(value, FLOOR)


class CompletionLogprobs:
    """Accumulates one choice's completions-format logprobs; offsets continue across chunks."""

    def __init__(self, start_offset: int, top_k: int) -> None:
        self.offset = start_offset
        self.top_k = top_k

    def block(self, items: Sequence[TokenLogprob | None]) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for item in items:
            if item is None:  # the first prompt token has no logprob
                continue
            tokens.append(item.text)
            token_logprobs.append(_lp(item.logprob))
            alternatives = {text: _lp(lp) for _, text, lp in item.top[: self.top_k]}
            alternatives.setdefault(item.text, _lp(item.logprob))  # the sampled token is always there
            top.append(alternatives)
            offsets.append(self.offset)
            self.offset += len(item.text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}

    def prompt_block(self, items: Sequence[TokenLogprob | None], first_text: str) -> dict[str, Any]:
        """Echoed prompt tokens: the first has `null` logprob and `null` alternatives."""
        block = {"tokens": [first_text], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [self.offset]}
        self.offset += len(first_text)
        rest = self.block(items[1:])
        for key in block:
            block[key] += rest[key]
        return block


def merge_blocks(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return b
    return {key: a[key] + b[key] for key in a}


def chat_logprobs(items: Sequence[TokenLogprob], top_k: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": item.text,
                "logprob": _lp(item.logprob),
                "bytes": list(item.text.encode("utf-8")),
                "top_logprobs": [
                    {"token": text, "logprob": _lp(lp), "bytes": list(text.encode("utf-8"))}
                    for _, text, lp in item.top[:top_k]
                ],
            }
            for item in items
        ]
    }
