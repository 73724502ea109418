"""The only errors an engine raises. Each face maps ErrorCode to its own status once."""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    UNSUPPORTED = "unsupported"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class EngineError(Exception):
    """A neutral, typed error. `param` names the offending input field when there is one."""

    def __init__(
        self, code: ErrorCode, message: str, *, param: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        # A finer, machine-readable cause ("template_error", "invalid_token_id", ...) that a face
        # may surface as its own error code.
        self.reason = reason

    def __repr__(self) -> str:
        return f"EngineError({self.code.value}, {self.message!r}, param={self.param!r})"


def deadline_exceeded() -> EngineError:
    """The request's deadline passed (before it started or while it ran): 504 / DEADLINE_EXCEEDED."""
    return EngineError(ErrorCode.DEADLINE_EXCEEDED, "The request deadline was exceeded.")
