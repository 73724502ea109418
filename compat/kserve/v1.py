"""KServe v1 REST: /v1/models, :predict, :explain. Thin routes over the data plane."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from compat.kserve.dataplane import DataPlane
from compat.kserve.http import JSON, Guard, KServeRoute, json_body, unguarded


def build_v1_router(plane: DataPlane, guard: Guard = unguarded) -> APIRouter:
    router = APIRouter(route_class=KServeRoute)

    # -- v1 -----------------------------------------------------------------------------------

    @router.get("/v1/models")
    async def v1_models() -> Response:
        return JSON({"models": plane.models()})

    @router.get("/v1/models/{name}")
    async def v1_model(name: str) -> Response:
        return JSON(await plane.model_ready(name))

    @router.post("/v1/models/{name}:predict")
    async def v1_predict(name: str, request: Request) -> Response:
        body = await json_body(request)
        return JSON(await guard(request, plane.infer_v1(name, body)))

    @router.post("/v1/models/{name}:explain")
    async def v1_explain(name: str) -> Response:
        return JSON({"error": "Could not find explainer_host."}, status_code=501)

    return router
