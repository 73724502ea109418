"""inference.GRPCInferenceService over the data plane, with KServe's status codes, plus the
standard health service and server reflection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compat.kserve.dataplane import DataPlane
from compat.kserve.errors import KServeError
from compat.kserve.grpc import convert
from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


async def _abort(context: grpc.aio.ServicerContext, exc: KServeError) -> None:
    await context.abort(_STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.plane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            await self.plane.model_ready(request.name)
        except KServeError as exc:
            if exc.status == 503:
                return pb.ModelReadyResponse(ready=False)
            await _abort(context, exc)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        try:
            if request.version:
                raise KServeError(501, "Model versioning not supported yet.")
            return convert.metadata_message(self.plane.model_metadata(request.name))
        except KServeError as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            if request.model_version:
                raise KServeError(501, "Model versioning not supported yet.")
            # Text elements go through the same decoding (UTF-8, non-empty) as REST.
            response = await self.plane.infer(convert.infer_request(request))
            return convert.response_message(response, raw=bool(request.raw_input_contents))
        except KServeError as exc:
            await _abort(context, exc)
            raise
        except Exception:
            log.exception("ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL, "Internal server error.")
            raise

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        try:
            await self.plane.model_ready(request.model_name)
        except KServeError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Unloading the only model of this server is not supported.")
        raise AssertionError("unreachable")

    # -- Triton's extensions (the same data as over REST) --------------------------------------

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        try:
            if request.version:
                raise KServeError(501, "Model versioning not supported yet.")
            config = self.plane.model_config(request.name)
        except KServeError as exc:
            await _abort(context, exc)
            raise

        def tensors(kind: Any, items: list[dict[str, Any]]) -> list[Any]:
            return [kind(name=t["name"], data_type=pb.DataType.Value(t["data_type"]), dims=t["dims"]) for t in items]

        return pb.ModelConfigResponse(config=pb.ModelConfig(
            name=config["name"], platform=config["platform"], backend=config["backend"], max_batch_size=config["max_batch_size"],
            input=tensors(pb.ModelInput, config["input"]), output=tensors(pb.ModelOutput, config["output"]),
        ))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        try:
            stats = self.plane.model_statistics(request.name or None)
        except KServeError as exc:
            await _abort(context, exc)
            raise
        out = []
        for st in stats:
            durations = {k: pb.StatisticDuration(count=v["count"], ns=v["ns"]) for k, v in st["inference_stats"].items()}
            out.append(pb.ModelStatistics(
                name=st["name"], version=st["version"], last_inference=st["last_inference"],
                inference_count=st["inference_count"], execution_count=st["execution_count"],
                inference_stats=pb.InferStatistics(**durations),
            ))
        return pb.ModelStatisticsResponse(model_stats=out)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        models = await self.plane.repository_index()
        if request.ready:
            models = [m for m in models if m["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])


def build_server(plane: DataPlane, *, max_send: int = 8 << 20, max_receive: int = 8 << 20, interceptors: Sequence[Any] = ()) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_send_message_length", max_send),
            ("grpc.max_receive_message_length", max_receive),
            ("grpc.so_reuseport", 0),  # a port already in use is a startup error, not a silent share
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.health = health_servicer  # type: ignore[attr-defined]
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server


async def mark_serving(server: grpc.aio.Server, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE):
        await server.health.set(name, status)  # type: ignore[attr-defined]
