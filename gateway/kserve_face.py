"""The KServe faces, mounted: v1 and v2 REST over one data plane (which the gRPC face shares),
with KServe's error envelope and the server's disconnect guard."""

from __future__ import annotations

from fastapi import FastAPI

from compat.kserve.dataplane import DataPlane
from compat.kserve.tasks import KServeOptions
from compat.kserve.v1 import build_v1_router
from compat.kserve.v2_rest import build_v2_router
from engines import Engine
from gateway.disconnect import cancel_on_disconnect
from gateway.faces import Face, plain_error
from gateway.settings import Settings


def kserve_options(settings: Settings) -> KServeOptions:
    return KServeOptions(
        return_probabilities=settings.return_probabilities,
        return_raw_logits=settings.return_raw_logits,
        add_special_tokens=not settings.disable_special_tokens,
        return_offsets_mapping=settings.return_offsets_mapping,
        return_label_names=settings.return_label_names,
        scores_as_numbers=settings.scores_as_numbers,
        fill_mask_top_k=settings.fill_mask_top_k,
        ragged_token_classification=settings.ragged_token_classification,
    )


def mount_kserve(app: FastAPI, engine: Engine, settings: Settings) -> tuple[DataPlane, list[Face]]:
    plane = DataPlane(engine, settings.model_name, kserve_options(settings))
    app.include_router(build_v1_router(plane, guard=cancel_on_disconnect))
    app.include_router(build_v2_router(plane, guard=cancel_on_disconnect))
    return plane, [Face("v1", plain_error, prefixes=("/v1",)), Face("v2", plain_error, prefixes=("/v2",))]
