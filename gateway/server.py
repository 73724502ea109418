"""Composition root: build the engine from settings, mount the faces, run uvicorn."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from engines import Engine
from engines.frontend import EngineFrontend
from engines.options import EngineOptions, RequestLimits
from engines.threads import ThreadPlan, apply_torch
from engines.loader import ModelSpec, load_model
from engines.selection import EngineStartError, UnknownEngineFlags, model_errors_stop_startup, select_engine
from gateway.auth import ApiKeys
from gateway.disconnect import ClientDisconnected
from gateway.faces import Faces
from gateway.kserve_face import mount_kserve
from gateway.openai.mount import PREFIX as OPENAI_PREFIX
from gateway.openai.mount import mount_openai
from gateway.operations import mount_operations
from gateway.http_protocol import ConnectionLimits
from gateway.lifecycle import Lifecycle
from gateway.middleware import GatewayMiddleware, HttpPolicy
from gateway.observability import Metrics, ObservedEngine, current_request
from gateway.openai.routes import JSONResponse
from gateway.runner import GatewayServer, Listen, PortError, bind_ports
from gateway.settings import Settings, apply_process_env

log = logging.getLogger("gateway")


class StartupError(RuntimeError):
    """A problem that stops the server from starting; its message is shown to the user as is."""


class UsageError(StartupError):
    """A command-line mistake: exit status 2, like the argument parser's own errors."""


def model_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        model_id=settings.model_id,
        model_dir=settings.model_dir,
        model_revision=settings.model_revision,
        tokenizer_revision=settings.tokenizer_revision,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        max_model_len=settings.max_model_len,
        task=settings.task,
        cache_dir=settings.cache_dir,
        do_lower_case=not settings.disable_lower_case,
    )


def build_engine(settings: Settings, cpu_threads: int | None = None) -> Engine:
    """The engine the settings ask for (blocking: seconds to minutes); the choice and its log line
    are the engines layer's (`engines.selection`), transformer mode is KServe's."""
    if settings.predictor_host:
        if settings.engine_args:
            raise UsageError(settings.unknown_flags_error())
        return build_predictor_engine(settings)
    try:
        return select_engine(model_spec(settings), settings.model_name, settings.section(EngineOptions, cpu_threads=cpu_threads))
    except UnknownEngineFlags as exc:
        raise UsageError(settings.unknown_flags_error(exc.hint)) from None
    except EngineStartError as exc:
        raise (UsageError if exc.usage else StartupError)(str(exc)) from None


def build_predictor_engine(settings: Settings) -> Engine:
    """KServe transformer mode: only the tokenizer and config here, the model on the predictor."""
    from compat.kserve.transformer import PredictorConfig, PredictorEngine
    from engines.tasks import ENCODER_TASKS

    try:
        with model_errors_stop_startup():
            loaded = load_model(model_spec(settings), weights=False)
    except EngineStartError as exc:
        raise StartupError(str(exc)) from None
    if loaded.task not in ENCODER_TASKS:
        raise StartupError(f"Transformer mode (--predictor_host) serves encoder tasks only, not {loaded.task.value}.")
    names = tuple(n.strip() for n in (settings.tensor_input_names or "").split(",") if n.strip())
    config = PredictorConfig(
        host=settings.predictor_host or "",
        model_name=settings.model_name,
        protocol=settings.predictor_protocol,
        use_ssl=settings.predictor_use_ssl,
        timeout_s=float(settings.predictor_request_timeout_seconds),
        retries=settings.predictor_request_retries,
        tensor_input_names=names,
        return_token_type_ids=settings.return_token_type_ids,
        health_check=settings.enable_predictor_health_check,
    )
    log.info("Engine: transformer mode, predictor %s over %s", config.host, config.protocol)
    return EngineFrontend(PredictorEngine(loaded, served_name=settings.model_name, predictor=config))


# Paths an OpenAI client asks for when its base URL misses the `/openai` prefix.
MISPLACED_OPENAI_PATHS = ("/chat/completions", "/completions", "/embeddings", "/responses")


def install_error_handlers(app: FastAPI, faces: Faces) -> None:
    """What no face's route decided: unknown paths and methods, in the envelope of the face the
    path belongs to (each face maps its own errors in its routes), and clients that left."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        path = request.url.path
        message = f"{request.method} {path}: {exc.detail}"
        face = faces.of(path)
        if exc.status_code == 404 and path.rstrip("/").endswith(MISPLACED_OPENAI_PATHS):
            # An OpenAI client whose base URL lacks /openai (the SDKs' default path is /v1/...):
            # say where the API is, in the envelope that client reads.
            message += f". The OpenAI API is served under {OPENAI_PREFIX}/v1: set the client's base URL to {request.base_url}{OPENAI_PREFIX.strip('/')}/v1"
            face = faces.of(f"{OPENAI_PREFIX}/v1")
        body = face.render(exc.status_code, message, code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnected)
    async def _disconnected(request: Request, exc: ClientDisconnected) -> Response:
        record = current_request.get()
        if record is not None:
            record.client_left = True
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """Wiring only: the measured engine, the middleware, each face mounted by its own function."""
    metrics = Metrics(settings.model_name)
    metrics.watch_engine(engine)
    engine = ObservedEngine(engine, metrics, settings.section(RequestLimits))  # every face below is measured and limited the same way
    keys = read_api_keys(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()
            engine.tokenizer.close()

    app = FastAPI(title="hf-gateway", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    faces = Faces()
    lifecycle = Lifecycle()
    app.add_middleware(GatewayMiddleware, policy=http_policy(settings, keys), metrics=metrics, faces=faces, lifecycle=lifecycle)
    if settings.cors_allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        # Outermost, so a browser's preflight is answered before the key check.
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_allowed_origins), allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"], expose_headers=["x-request-id"], max_age=600,
        )
    install_error_handlers(app, faces)

    faces.add(mount_openai(app, engine, settings))
    plane, kserve = mount_kserve(app, engine, settings)
    for face in kserve:
        faces.add(face)
    mount_operations(app, engine, settings, metrics, lifecycle)

    app.state.engine = engine
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.plane = plane
    app.state.keys = keys
    app.state.lifecycle = lifecycle
    return app


def http_policy(settings: Settings, keys: ApiKeys) -> HttpPolicy:
    return HttpPolicy(
        keys=keys,
        protect_open_paths=settings.auth_health_and_metrics,
        max_body_bytes=settings.max_request_body_bytes,
        default_timeout=settings.request_timeout,
        log_format=settings.log_format,
        access_log=not settings.disable_log_requests,
    )


def build_grpc_server(app: FastAPI) -> Any:
    """The v2 gRPC face over the app's data plane, with the same keys, records and lifecycle."""
    from compat.kserve.grpc.servicer import build_server
    from gateway.grpc_interceptors import AccessInterceptor, ApiKeyInterceptor

    settings: Settings = app.state.settings
    keys: ApiKeys = app.state.keys
    access = AccessInterceptor(
        app.state.metrics, log_format=None if settings.disable_log_requests else settings.log_format,
        default_timeout=settings.request_timeout, lifecycle=app.state.lifecycle,
    )
    interceptors: list[Any] = [access]
    if keys:
        interceptors.insert(0, ApiKeyInterceptor(keys, protect_health=settings.auth_health_and_metrics,
                                                 open_reflection=settings.open_grpc_reflection))
    return build_server(
        app.state.plane, max_send=settings.grpc_max_send_message_length, max_receive=settings.grpc_max_receive_message_length,
        interceptors=interceptors,
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s.%(msecs)03d %(process)s %(name)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )


def read_api_keys(settings: Settings) -> ApiKeys:
    try:
        return ApiKeys.from_settings(settings.api_key, settings.api_key_file)
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read --api_key_file {settings.api_key_file}: {getattr(exc, 'strerror', None) or exc}.") from None


def _fail(message: str, status: int) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see gateway.cli, which sizes threads before torch loads)."""
    from gateway.cli import main as cli_main

    cli_main(argv)


def serve(settings: Settings, threads: ThreadPlan) -> None:
    """Take the ports, load the engine, serve until a signal, exit (the flags were checked by the
    command line: `Settings.problems`)."""
    apply_process_env()
    configure_logging(settings.log_level)
    apply_torch(threads)
    log.info("%s", threads.describe())
    listen = Listen(settings.host, settings.http_port, settings.grpc_port if settings.enable_grpc else None)
    try:
        sockets = bind_ports(listen)  # before the model: a busy port is known in a second
        read_api_keys(settings)  # and an unreadable key file too
        engine = build_engine(settings, threads.intra_op)
        app = create_app(settings, engine)
    except UsageError as exc:
        _fail(str(exc), 2)
    except (StartupError, PortError) as exc:
        _fail(f"hf-gateway: cannot start: {exc}", 1)
    except Exception as exc:  # any other start-up failure: one line (the traceback at debug level)
        log.debug("start-up failed", exc_info=True)
        _fail(f"hf-gateway: cannot start: {type(exc).__name__}: {exc}", 1)

    caps = engine.capabilities
    log.info(
        "Serving %s (root %s, %s, max_model_len %d) at http://%s:%d/openai/v1",
        caps.model_name, caps.root, caps.dtype, caps.max_model_len, settings.host, settings.http_port,
    )
    if not settings.disable_playground:
        shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host  # an IPv6 address in a URL
        log.info("Playground (chat in a browser): http://%s:%d/playground", shown_host, settings.http_port)
    server = GatewayServer(
        app, sockets, listen=listen, grace_period=settings.shutdown_grace_period, timeout_keep_alive=settings.timeout_keep_alive,
        log_level=settings.log_level, executor_threads=threads.executor,
        limits=ConnectionLimits(settings.timeout_request_headers, settings.timeout_request_body, settings.max_request_header_bytes),
    )
    try:
        status = server.run()
    except StartupError as exc:
        _fail(f"hf-gateway: cannot start: {exc}", 1)
    log.info("Stopped.")
    raise SystemExit(status)
