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
class Collected:
    text: str
    finish_reason: str | None
    stop_reason: str | int | None
    usage: dict[str, Any]


async def collect(gen: Generation, *, chat: bool) -> Collected:
    usage = UsageTracker(chat=chat)
    parts: list[str] = []
    last: GenerationDelta | None = None
    async for delta in gen.deltas():
        usage.observe(delta)
        parts.append(delta.text)
        last = delta
    assert last is not None, "the engine ended a generation without a final delta"
    return Collected("".join(parts), last.finish_reason, last.stop_reason, usage.usage())
