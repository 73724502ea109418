"""Engines: the bottom layer. Knows torch and transformers; never imports web or gRPC code."""

from engines.errors import EngineError, ErrorCode
from engines.protocol import Engine
from engines.types import Capabilities, EmbeddingResult, GenerationDelta, GenerationParams, RequestContext

__all__ = [
    "Capabilities",
    "EmbeddingResult",
    "Engine",
    "EngineError",
    "ErrorCode",
    "GenerationDelta",
    "GenerationParams",
    "RequestContext",
]
