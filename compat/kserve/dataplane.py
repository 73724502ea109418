"""Transport-neutral KServe v1/v2 operations over one engine (REST now, gRPC later)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from compat.kserve.codecs import parameters_of, v1_texts
from compat.kserve.errors import KServeError, model_not_found
from compat.kserve.tasks import KServeOptions, Prediction, output_metadata, predict
from compat.kserve.types import InferRequest, InferResponse
from engines import Engine, EngineError

SERVER_NAME = "hf-gateway"
SERVER_VERSION = "0.1.0"


# Triton's model configuration names for the v2 datatypes (its `DataType` enum, as `TYPE_<name>`).
TRITON_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
                "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
                "BYTES": "TYPE_STRING", "BF16": "TYPE_BF16"}


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class InferenceStatistics:
    """Triton's statistics extension for the one model: what its clients (tritonclient's
    `get_inference_statistics`, perf_analyzer) read. Times are whole-request wall times."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    inference_count: int = 0  # inputs (batch items) inferred
    execution_count: int = 0  # model executions (one per request here)
    last_inference_ms: int = 0

    def record(self, started_ns: int, items: int, ok: bool) -> None:
        elapsed = time.perf_counter_ns() - started_ns
        self.last_inference_ms = int(time.time() * 1000)
        if ok:
            self.success.add(elapsed)
            self.inference_count += items
            self.execution_count += 1
        else:
            self.fail.add(elapsed)


class DataPlane:
    def __init__(self, engine: Engine, model_name: str, options: KServeOptions = KServeOptions()) -> None:
        self.engine = engine
        self.model_name = model_name
        self.options = options
        self.statistics = InferenceStatistics()

    def require_model(self, name: str) -> None:
        if name != self.model_name:
            raise model_not_found(name)

    async def ready(self) -> bool:
        return await self.engine.check_health()

    # -- metadata -----------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION,
                "extensions": ["model_repository_extension", "model_configuration", "statistics", "binary_tensor_data"]}

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

    def model_config(self, name: str) -> dict[str, Any]:
        """Triton's model configuration (JSON form of its `ModelConfig`), from the v2 metadata."""
        meta = self.model_metadata(name)

        def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"name": t["name"], "data_type": TRITON_TYPES.get(t["datatype"], "TYPE_INVALID"), "dims": list(t["shape"])} for t in items]

        return {"name": name, "platform": meta["platform"], "backend": "hf-gateway", "max_batch_size": 0,
                "input": tensors(meta["inputs"]), "output": tensors(meta["outputs"])}

    async def repository_index(self) -> list[dict[str, Any]]:
        """Triton's repository index: the one model, READY or UNAVAILABLE."""
        ready = await self.ready()
        return [{"name": self.model_name, "version": "1", "state": "READY" if ready else "UNAVAILABLE",
                 "reason": "" if ready else "the engine is not ready"}]

    def model_statistics(self, name: str | None) -> list[dict[str, Any]]:
        """Triton's statistics extension, JSON form (durations in nanoseconds)."""
        if name:
            self.require_model(name)
        st = self.statistics
        zero = {"count": 0, "ns": 0}
        return [{
            "name": self.model_name, "version": "1", "last_inference": st.last_inference_ms,
            "inference_count": st.inference_count, "execution_count": st.execution_count,
            "inference_stats": {
                "success": {"count": st.success.count, "ns": st.success.ns},
                "fail": {"count": st.fail.count, "ns": st.fail.ns},
                "queue": zero, "compute_input": zero, "compute_output": zero,
                "compute_infer": {"count": st.success.count, "ns": st.success.ns},
                "cache_hit": zero, "cache_miss": zero,
            },
            "batch_stats": [],
        }]

    # -- inference ----------------------------------------------------------------------------

    async def _predict(self, texts: list[str], parameters: dict[str, Any]) -> Prediction:
        started, ok = time.perf_counter_ns(), False
        try:
            result = await predict(self.engine, texts, parameters, self.options)
            ok = True
            return result
        except EngineError as exc:
            raise KServeError.from_engine(exc) from None
        finally:
            self.statistics.record(started, len(texts), ok)

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
