"""KServe's error envelope `{"error": "<message>"}`, and the one map from engine error codes."""

from __future__ import annotations

from engines.errors import EngineError, ErrorCode

_STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNSUPPORTED: 400,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 400,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}


class KServeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message}

    @property
    def headers(self) -> dict[str, str]:
        """A refusal the client may retry says when (429 at capacity, 503 while unavailable)."""
        return {"Retry-After": "1"} if self.status in (429, 503) else {}

    @classmethod
    def from_engine(cls, exc: EngineError) -> KServeError:
        return cls(_STATUS[exc.code], exc.message)


def invalid_input(message: str) -> KServeError:
    return KServeError(400, message)


def model_not_found(name: str) -> KServeError:
    return KServeError(404, f"Model with name {name} does not exist.")
