"""What chat and completions share: config, model lookup, ids, one generation run, request logs."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines import Engine, EngineError, GenerationDelta, GenerationParams, RequestContext
from gateway.openai.errors import OpenAIError, model_not_found
from gateway.openai.protocol import SamplingDefaults
from gateway.usage import UsageTracker

log = logging.getLogger("gateway.requests")

SERVER_VERSION = "0.1.0"


@dataclass(frozen=True)
class OpenAIConfig:
    served_name: str
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    ping_interval: float = 15.0
    log_requests: bool = True
    max_log_len: int | None = None


class ServiceBase:
    def __init__(self, engine: Engine, config: OpenAIConfig) -> None:
        self.engine = engine
        self.config = config
        caps = engine.capabilities
        digest = hashlib.sha256(f"{caps.root}|{caps.engine}|{caps.dtype}|{SERVER_VERSION}".encode()).hexdigest()
        self.fingerprint = f"fp_{digest[:10]}"

    def resolve_model(self, requested: str | None) -> str:
        """The name to echo in responses; unknown names are a 404 naming `model`."""
        if requested is None or requested == self.config.served_name:
            return self.config.served_name
        raise model_not_found(requested)

    def log_request(self, request_id: str, prompt: str | Sequence[int], params: GenerationParams) -> None:
        if not self.config.log_requests or not log.isEnabledFor(logging.INFO):
            return
        shown: Any = prompt
        limit = self.config.max_log_len
        if limit is not None:
            shown = prompt[:limit]
        log.info("Received request %s: prompt: %r, params: %s", request_id, shown, params)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


@dataclass
class Generation:
    """One choice being generated: engine deltas with errors already in the OpenAI envelope."""

    engine: Engine
    prompt: Sequence[int]
    params: GenerationParams
    request_id: str
    rename: Mapping[str, str] = field(default_factory=dict)  # neutral field name -> request's name

    async def deltas(self) -> AsyncIterator[GenerationDelta]:
        stream = self.engine.generate(self.prompt, self.params, RequestContext(self.request_id))
        try:
            async for delta in stream:
                yield delta
        except EngineError as exc:
            raise OpenAIError.from_engine(exc, rename=self.rename) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


@dataclass
class Prepared:
    """A validated request, ready to generate: ids, names, and the usage rules of its stream."""

    id: str
    chunk_object: str  # "chat.completion.chunk" or "text_completion"
    created: int
    model: str
    fingerprint: str
    generation: Generation
    include_usage: bool = False
    continuous_usage: bool = False
    usage: UsageTracker = field(default_factory=UsageTracker)

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        """One stream chunk for one choice, with `usage` as the request's stream_options ask."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [choice],
        }
        if self.continuous_usage:
            body["usage"] = self.usage.choice_usage()
        elif self.include_usage:
            body["usage"] = None
        return body

    def response(self, object_: str, choice: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming body around one choice."""
        return {
            "id": self.id,
            "object": object_,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [choice],
            "usage": usage,
        }

    def usage_chunk(self) -> dict[str, Any]:
        """The final chunk: no choices, the totals."""
        body = self.chunk({})
        body["choices"] = []
        body["usage"] = self.usage.usage()
        return body


def stream_usage_options(opts: Any) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats); continuous stats only on top of include_usage."""
    include = bool(opts and opts.include_usage)
    return include, include and bool(opts.continuous_usage_stats)


@dataclass
class Collected:
    text: str
    finish_reason: str | None
    stop_reason: str | int | None
    usage: dict[str, Any]


async def collect(p: Prepared) -> Collected:
    parts: list[str] = []
    last: GenerationDelta | None = None
    async for delta in p.generation.deltas():
        p.usage.observe(delta)
        parts.append(delta.text)
        last = delta
    assert last is not None, "the engine ended a generation without a final delta"
    return Collected("".join(parts), last.finish_reason, last.stop_reason, p.usage.usage())
