"""The OpenAI error envelope, and the one table that maps engine error codes onto it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engines.errors import EngineError, ErrorCode

# ErrorCode -> (HTTP status, OpenAI error type, OpenAI error code)
_ENGINE_ERRORS: dict[ErrorCode, tuple[int, str, str]] = {
    ErrorCode.INVALID_REQUEST: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    ErrorCode.UNSUPPORTED: (400, "invalid_request_error", "unsupported_value"),
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error", "context_length_exceeded"),
    ErrorCode.OVERLOADED: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "server_error", "deadline_exceeded"),
    ErrorCode.INTERNAL: (500, "server_error", "internal_error"),
}
_RETRY_AFTER_SECONDS = "1"


class OpenAIError(Exception):
    """An error the OpenAI face returns as `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = "invalid_value",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_engine(cls, exc: EngineError, *, rename: Mapping[str, str] | None = None) -> OpenAIError:
        """Map an engine error; `rename` turns neutral field names into this request's names."""
        status, type_, code = _ENGINE_ERRORS[exc.code]
        headers: dict[str, str] = {}
        if status in (429, 503):
            headers["Retry-After"] = _RETRY_AFTER_SECONDS
        param = exc.param
        if param is not None and rename:
            param = rename.get(param, param)
        return cls(status, exc.message, type=type_, code=exc.reason or code, param=param, headers=headers)


def invalid(message: str, param: str | None, *, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, code=code, param=param)


def unsupported(param: str, detail: str = "") -> OpenAIError:
    message = f"The parameter `{param}` is not supported by this server yet{': ' + detail if detail else ''}."
    return OpenAIError(400, message, code="unsupported_parameter", param=param)


def model_not_found(name: str, served: Sequence[str] = ()) -> OpenAIError:
    """A 404 that says what this server does serve, so a client sending a hub id learns the name."""
    known = ", ".join(f"`{s}`" for s in served)
    hint = f" This server serves {known}; send one of them as `model`, or leave `model` out." if served else ""
    return OpenAIError(
        404,
        f"The model `{name}` does not exist or you do not have access to it.{hint}",
        code="model_not_found",
        param="model",
    )


def internal_error() -> OpenAIError:
    return OpenAIError(500, "The server had an error while processing your request.", type="server_error", code="internal_error")


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    """The OpenAI envelope for an error decided outside the face's routes (key, size, drain, fault)."""
    kind = "authentication_error" if status == 401 else "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def from_exception(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, EngineError):
        return OpenAIError.from_engine(exc)
    return internal_error()


_PYDANTIC_CODES = {
    "missing": "missing_required_parameter",
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "model_attributes_type": "invalid_type",
    "dict_type": "invalid_type",
    "list_type": "invalid_type",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "int_parsing": "invalid_type",
    "float_type": "invalid_type",
    "float_parsing": "invalid_type",
    "bool_type": "invalid_type",
    "bool_parsing": "invalid_type",
}


def _param_path(loc: Sequence[Any]) -> str | None:
    parts = [p for p in loc if p != "body"]
    # Drop pydantic's union-branch labels ("str", "list[str]", "function-after[...]").
    parts = [p for p in parts if isinstance(p, int) or ("[" not in str(p) and str(p) not in ("str", "int", "float", "bool", "list", "dict"))]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """FastAPI/pydantic validation errors -> one 400 naming the first offending field."""
    if not errors:
        return invalid("Invalid request body.", None)
    first = errors[0]
    kind = str(first.get("type", ""))
    param = _param_path(first.get("loc", ()))
    if kind.startswith("json"):
        reason = str((first.get("ctx") or {}).get("error") or "").strip().rstrip(".")
        return invalid(f"The request body is not valid JSON{': ' + reason if reason else ''}.", None, code="invalid_json")
    if kind == "model_attributes_type" and param is None:
        return invalid("The request body must be a JSON object.", None, code="invalid_type")
    detail = str(first.get("msg", "invalid value"))
    if kind == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {detail}." if param else f"{detail}."
    return invalid(message, param, code=_PYDANTIC_CODES.get(kind, "invalid_value"))
