"""The operational routes: liveness (`/`), `/health`, `/ready`, `/metrics`, and the playground."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from engines import Engine
from gateway.lifecycle import Lifecycle
from gateway.observability import Metrics
from gateway.openai.routes import JSONResponse
from gateway.playground import build_playground_router, playground_redirect, wants_html
from gateway.settings import Settings


def mount_operations(app: FastAPI, engine: Engine, settings: Settings, metrics: Metrics, lifecycle: Lifecycle) -> None:
    if not settings.disable_playground:
        app.include_router(build_playground_router())

    @app.get("/")
    async def liveness(request: Request) -> Response:
        """KServe's liveness JSON; a browser navigating here is sent to the playground."""
        if not settings.disable_playground and wants_html(request):
            return playground_redirect()
        return JSONResponse({"status": "alive"})

    @app.get("/health")
    async def health() -> Response:
        """Liveness of the engine itself (its scheduler thread or worker)."""
        ok = await engine.check_health()
        return JSONResponse({"healthy": ok}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ready")
    async def ready() -> Response:
        """Ready to take more work: healthy, not shutting down, and not every slot is taken."""
        ok = await engine.check_health()
        stats = engine.stats()
        draining = lifecycle.draining
        body = {**stats.as_dict(), "ready": ok and not stats.saturated and not draining, "draining": draining}
        return JSONResponse(body, status_code=200 if body["ready"] else 503, headers={} if body["ready"] else {"Retry-After": "1"})
