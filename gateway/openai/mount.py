"""The OpenAI face, mounted: /openai/v1 (chat, completions, embeddings, models) and the
tokenizer routes, with its error envelope declared for errors decided outside its routes."""

from __future__ import annotations

import time

from fastapi import FastAPI

from engines import Engine
from engines.template_pool import TemplateLimits
from gateway.faces import Face
from gateway.openai.config import OpenAIConfig, SamplingDefaults
from gateway.openai.errors import error_body
from gateway.openai.routes import build_router, build_tokenizer_router
from gateway.openai.services.chat import ChatService
from gateway.openai.services.completions import CompletionService
from gateway.openai.services.embeddings import EmbeddingService
from gateway.openai.services.models import ModelService
from gateway.openai.services.tokenize import TokenizeService
from gateway.settings import Settings

PREFIX = "/openai"
TOKENIZER_PATHS = ("/tokenize", "/detokenize")


def openai_config(settings: Settings) -> OpenAIConfig:
    defaults = SamplingDefaults(
        temperature=1.0 if settings.default_temperature is None else settings.default_temperature,
        top_p=1.0 if settings.default_top_p is None else settings.default_top_p,
        top_k=0 if settings.default_top_k is None else settings.default_top_k,
        max_output_tokens=settings.max_output_tokens or None,  # 0: no server default, the rest of the context
    )
    return OpenAIConfig(
        served_name=settings.model_name,
        defaults=defaults,
        ping_interval=settings.stream_ping_interval,
        log_requests=settings.log_prompts and not settings.disable_log_requests,
        max_log_len=settings.max_log_len,
        max_n=settings.max_n,
        max_logprobs=settings.max_logprobs,
        trust_request_chat_template=settings.trust_request_chat_template,
    )


def mount_openai(app: FastAPI, engine: Engine, settings: Settings) -> Face:
    engine.tokenizer.configure_templates(
        TemplateLimits(timeout_s=settings.chat_template_timeout, memory_mb=settings.chat_template_memory_mb)
    )
    config = openai_config(settings)
    chat = ChatService(engine, config)
    router = build_router(
        chat, CompletionService(engine, config), EmbeddingService(engine, config), ModelService(engine, config, created=int(time.time())),
    )
    app.include_router(router, prefix=f"{PREFIX}/v1")
    tokenizer_router = build_tokenizer_router(TokenizeService(chat))
    app.include_router(tokenizer_router, prefix=PREFIX)
    app.include_router(tokenizer_router)
    return Face("openai", error_body, prefixes=(PREFIX,), paths=TOKENIZER_PATHS)
