"""Thin OpenAI routes: parse, call one service, wrap the result."""

from __future__ import annotations

from typing import Any

import re

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from engines import EngineError
from gateway.disconnect import cancel_on_disconnect
from gateway.openai.errors import OpenAIError, from_exception, from_validation_errors, invalid
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, ignored_params
from gateway.openai.services.chat import ChatService
from gateway.openai.services.completions import CompletionService
from gateway.openai.services.embeddings import EmbeddingRequest, EmbeddingService
from gateway.openai.services.models import ModelService
from gateway.openai.services.tokenize import DetokenizeRequest, TokenizeRequest, TokenizeService
from gateway.sse import event_stream

IGNORED_HEADER = "x-ignored-params"
# Names of unknown fields, as they may appear in a response header: short, plain, and few.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")
_MAX_IGNORED_NAMES = 16


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class OpenAIRoute(APIRoute):
    """Every route of the OpenAI face. Request bodies are parsed as strict JSON (orjson): no NaN or
    Infinity, no lone surrogates, no integers past 64 bits, at most 1024 levels (FastAPI turns a
    failure into a validation error: a 400 `invalid_json`). Errors leave in OpenAI's envelope, mapped
    here, once for the face: its own, the engine's (one table, `errors.py`) and FastAPI's."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def openai_route(request: Request) -> Response:
            try:
                return await handler(_StrictJSONRequest(request.scope, request.receive))
            except RequestValidationError as exc:
                err = from_validation_errors(exc.errors())
                content_type = request.headers.get("content-type", "")
                if err.code == "invalid_type" and "json" not in content_type.lower():
                    # `curl -d` without `-H 'content-type: application/json'` sends a form: FastAPI
                    # then hands the model no JSON at all, whatever the body looks like.
                    err = invalid(f"The request body must be JSON, sent with `Content-Type: application/json` "
                                  f"(this request's is {content_type or 'missing'!r}).", None, code="invalid_content_type")
            except (OpenAIError, EngineError) as exc:
                err = from_exception(exc)
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

        return openai_route


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error_event(exc: BaseException) -> dict[str, Any]:
    return from_exception(exc).body()


def _headers(body: Any) -> dict[str, str]:
    """`x-ignored-params`: the unknown fields the request sent. Only plain names of at most 64
    characters are listed, at most 16 of them; the rest are counted (`+N more`)."""
    names = ignored_params(body)
    if not names:
        return {}
    shown = [n for n in names if _SAFE_NAME.fullmatch(n)][:_MAX_IGNORED_NAMES]
    if len(shown) < len(names):
        shown.append(f"+{len(names) - len(shown)} more")
    return {IGNORED_HEADER: ",".join(shown)}


def build_router(
    chat: ChatService, completions: CompletionService, embeddings: EmbeddingService, models: ModelService
) -> APIRouter:
    router = APIRouter(route_class=OpenAIRoute)
    ping = chat.config.ping_interval

    async def respond(request: Request, body: Any, service: ChatService | CompletionService) -> Response:
        headers = _headers(body)
        if body.stream:
            return await event_stream(
                request, service.stream(body), error_body=_error_event, headers=headers, ping_interval=ping
            )
        return JSONResponse(await cancel_on_disconnect(request, service.complete(body)), headers=headers)

    @router.post("/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await respond(request, body, chat)

    @router.post("/completions")
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await respond(request, body, completions)

    @router.post("/embeddings")
    async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
        result = await cancel_on_disconnect(request, embeddings.create(body))
        return JSONResponse(result, headers=_headers(body))

    @router.get("/models")
    async def list_models() -> Response:
        return JSONResponse(models.list())

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        return JSONResponse(models.retrieve(model_id))

    return router


def build_tokenizer_router(service: TokenizeService) -> APIRouter:
    """Mounted at /openai and at the root, where `vllm bench serve` looks for it."""
    router = APIRouter(route_class=OpenAIRoute)

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        return JSONResponse(await service.tokenize(body))

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Response:
        return JSONResponse(await service.detokenize(body))

    return router
