"""The KServe faces, mounted: v1 and v2 REST over one data plane (which the gRPC face shares),
with KServe's error envelope and the server's disconnect guard."""

from __future__ import annotations

from fastapi import FastAPI

from compat.kserve.dataplane import DataPlane
from compat.kserve.options import KServeOptions
from compat.kserve.v1 import build_v1_router
from compat.kserve.v2_rest import build_v2_router
from engines import Engine
from gateway.disconnect import cancel_on_disconnect
from gateway.faces import Face, plain_error
from gateway.settings import Settings


def mount_kserve(app: FastAPI, engine: Engine, settings: Settings) -> tuple[DataPlane, list[Face]]:
    plane = DataPlane(engine, settings.model_name, settings.section(KServeOptions))
    app.include_router(build_v1_router(plane, guard=cancel_on_disconnect))
    app.include_router(build_v2_router(plane, guard=cancel_on_disconnect))
    return plane, [Face("v1", plain_error, prefixes=("/v1",)), Face("v2", plain_error, prefixes=("/v2",))]
