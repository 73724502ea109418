"""The OpenAI face's section of the settings: each default defined here, once (the command line
takes it from here). Plain values only: importing this loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# Output length of a chat completion that asks for none. Chat UIs (Open WebUI by default) send no
# max_tokens; OpenAI's rule, the rest of the context, then lets a small model ramble for minutes.
CHAT_DEFAULT_MAX_TOKENS = 2048


@dataclass(frozen=True)
class SamplingDefaults:
    """Server-level defaults (operator settings) over OpenAI's defaults."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_output_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_output_tokens": self.max_output_tokens,
        }


@dataclass(frozen=True)
class OpenAIConfig:
    served_name: str
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    ping_interval: float = 15.0
    log_requests: bool = True
    max_log_len: int | None = None
    max_n: int = 16
    max_logprobs: int = 20
    trust_request_chat_template: bool = False
