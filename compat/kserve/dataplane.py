"""Transport-neutral KServe v1/v2 operations over one engine (REST now, gRPC later)."""

from __future__ import annotations

import uuid
from typing import Any

from compat.kserve.codecs import parameters_of, v1_texts
from compat.kserve.errors import KServeError, model_not_found
from compat.kserve.tasks import KServeOptions, Prediction, output_metadata, predict
from compat.kserve.types import InferRequest, InferResponse
from engines import Engine, EngineError

SERVER_NAME = "hf-gateway"
SERVER_VERSION = "0.1.0"


class DataPlane:
    def __init__(self, engine: Engine, model_name: str, options: KServeOptions = KServeOptions()) -> None:
        self.engine = engine
        self.model_name = model_name
        self.options = options

    def require_model(self, name: str) -> None:
        if name != self.model_name:
            raise model_not_found(name)

    async def ready(self) -> bool:
        return await self.engine.check_health()

    # -- metadata -----------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["model_repository_extension"]}

    def models(self) -> list[str]:
        return [self.model_name]

    async def model_ready(self, name: str) -> dict[str, Any]:
        self.require_model(name)
        if not await self.ready():
            raise KServeError(503, f"Model with name {name} is not ready.")
        return {"name": name, "ready": True}

    def model_metadata(self, name: str) -> dict[str, Any]:
        self.require_model(name)
        caps = self.engine.capabilities
        task = next(iter(caps.tasks))
        meta: dict[str, Any] = {
            "name": name,
            "versions": None,
            "platform": "hf-gateway/transformers",
            "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}],
            "outputs": output_metadata(task, self.options),
        }
        if caps.labels:  # what the numeric class predictions mean (KServe publishes nothing)
            meta["parameters"] = {"id2label": {str(i): label for i, label in enumerate(caps.labels)}}
        return meta

    # -- inference ----------------------------------------------------------------------------

    async def _predict(self, texts: list[str], parameters: dict[str, Any]) -> Prediction:
        try:
            return await predict(self.engine, texts, parameters, self.options)
        except EngineError as exc:
            raise KServeError.from_engine(exc) from None

    async def infer_v1(self, name: str, body: Any) -> dict[str, Any]:
        self.require_model(name)
        result = await self._predict(v1_texts(body), parameters_of(body))
        body_out: dict[str, Any] = {"predictions": result.v1}
        if result.v1_outputs:
            body_out["outputs"] = [t.to_json() for t in result.v1_outputs]  # KServe puts offset_mapping next to predictions
        return body_out

    async def infer(self, request: InferRequest) -> InferResponse:
        """One v2 inference, the same for REST and gRPC."""
        self.require_model(request.model_name)
        result = await self._predict(request.texts, request.parameters)
        return InferResponse(request.model_name, request.id or str(uuid.uuid4()), result.v2)
