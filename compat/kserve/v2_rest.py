"""KServe v2 (Open Inference Protocol) REST. Thin routes over the data plane."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from compat.kserve.codecs import BINARY_HEADER, encode_binary_response, split_binary_request, v2_request, wants_binary
from compat.kserve.dataplane import DataPlane
from compat.kserve.errors import KServeError
from compat.kserve.http import JSON, Guard, KServeRoute, json_body, unguarded


def build_v2_router(plane: DataPlane, guard: Guard = unguarded) -> APIRouter:
    router = APIRouter(route_class=KServeRoute)

    # -- v2 -----------------------------------------------------------------------------------

    @router.get("/v2")
    async def v2_server() -> Response:
        return JSON(plane.server_metadata())

    @router.get("/v2/health/live")
    async def v2_live() -> Response:
        return JSON({"live": True})

    @router.get("/v2/health/ready")
    async def v2_ready() -> Response:
        ready = await plane.ready()
        return JSON({"ready": ready}, status_code=200 if ready else 503)

    @router.get("/v2/models")
    async def v2_models() -> Response:
        return JSON({"models": plane.models()})

    @router.get("/v2/models/stats")  # before /v2/models/{name}, which would take "stats" for a name
    async def all_statistics() -> Response:
        return JSON({"model_stats": plane.model_statistics(None)})

    @router.get("/v2/models/{name}")
    async def v2_metadata(name: str) -> Response:
        return JSON(plane.model_metadata(name))

    @router.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> Response:
        return JSON(await plane.model_ready(name))

    @router.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        rid = request.scope.get("state", {}).get("request_id")
        header_length = request.headers.get(BINARY_HEADER)
        if header_length is not None:  # the binary tensor extension
            body = split_binary_request(await request.body(), header_length)
        else:
            body = await json_body(request)
        plane.require_model(name)
        which = wants_binary(body)  # before inference: a malformed request costs nothing
        typed = v2_request(body, name, rid)
        response = (await guard(request, plane.infer(typed))).to_json()
        if not which:
            return JSON(response)
        payload, length = encode_binary_response(response, which)
        return Response(payload, media_type="application/octet-stream", headers={BINARY_HEADER: str(length)})

    # Triton's extensions that its clients call (tritonclient: get_model_config,
    # get_model_repository_index, get_inference_statistics).
    @router.get("/v2/models/{name}/config")
    async def v2_model_config(name: str) -> Response:
        return JSON(plane.model_config(name))

    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await json_body(request) if await request.body() else {}
        models = await plane.repository_index()
        if isinstance(body, dict) and body.get("ready"):  # Triton: only the models that are ready
            models = [m for m in models if m["state"] == "READY"]
        return JSON(models)

    @router.get("/v2/models/{name}/stats")
    async def model_statistics(name: str) -> Response:
        return JSON({"model_stats": plane.model_statistics(name)})

    @router.post("/v2/repository/models/{name}/load")
    async def repository_load(name: str) -> Response:
        await plane.model_ready(name)  # the one model is loaded at start; 404 for any other
        return JSON({"name": name, "load": True})

    @router.post("/v2/repository/models/{name}/unload")
    async def repository_unload(name: str) -> Response:
        plane.model_metadata(name)  # 404 for unknown names
        # KServe really unloads (unauthenticated) and leaves a server with nothing to serve.
        raise KServeError(501, "Unloading the only model of this server is not supported.")

    @router.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    @router.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    @router.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def v2_versioned(name: str, version: str) -> Response:
        raise KServeError(501, "Model versioning not supported yet.")

    return router
