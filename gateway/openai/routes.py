"""Thin OpenAI routes: parse, call one service, wrap the result."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.disconnect import cancel_on_disconnect
from gateway.openai.errors import from_exception
from gateway.openai.protocol import ChatCompletionRequest, CompletionRequest, ignored_params
from gateway.openai.services.chat import ChatService
from gateway.openai.services.completions import CompletionService
from gateway.openai.services.embeddings import EmbeddingRequest, EmbeddingService
from gateway.openai.services.models import ModelService
from gateway.openai.services.tokenize import DetokenizeRequest, TokenizeRequest, TokenizeService
from gateway.sse import event_stream

IGNORED_HEADER = "x-ignored-params"


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error_event(exc: BaseException) -> dict[str, Any]:
    return from_exception(exc).body()


def _headers(body: Any) -> dict[str, str]:
    names = ignored_params(body)
    return {IGNORED_HEADER: ",".join(names)} if names else {}


def build_router(
    chat: ChatService, completions: CompletionService, embeddings: EmbeddingService, models: ModelService
) -> APIRouter:
    router = APIRouter()
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
    router = APIRouter()

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> Response:
        return JSONResponse(await service.tokenize(body))

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Response:
        return JSONResponse(await service.detokenize(body))

    return router
