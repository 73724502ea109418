"""Usage accounting from engine token counts. Nothing here re-tokenizes text."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from engines.types import GenerationDelta


@dataclass
class UsageTracker:
    """Prompt tokens once per prompt, completion tokens summed over every choice."""

    prompt_tokens: dict[int, int] = field(default_factory=dict)  # prompt index -> tokens
    completion_tokens: dict[Hashable, int] = field(default_factory=dict)  # choice -> tokens
    chat: bool = False

    def observe(self, delta: GenerationDelta, *, choice: Hashable = 0, prompt: int = 0) -> None:
        self.prompt_tokens[prompt] = delta.prompt_tokens
        self.completion_tokens[choice] = delta.completion_tokens

    def usage(self) -> dict[str, Any]:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(self.completion_tokens.values())
        out: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        if self.chat:
            out["completion_tokens_details"] = {"reasoning_tokens": 0}
        return out

    def choice_usage(self, *, choice: Hashable = 0, prompt: int = 0) -> dict[str, Any]:
        """Cumulative usage of one choice (for `continuous_usage_stats`)."""
        p = self.prompt_tokens.get(prompt, 0)
        c = self.completion_tokens.get(choice, 0)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
