"""KServe's transformer mode: this server tokenizes, a remote predictor (Triton, another KServe
model server) runs the model, and this server post-processes the logits exactly like the local
path. `PredictorEngine` implements the encoder part of the Engine protocol over a predictor
client, so the task adapters, v1/v2 REST and gRPC faces work unchanged on top of it.

Wire: the tokenizer outputs `input_ids`, `attention_mask` (and `token_type_ids` with
--return_token_type_ids; --tensor_input_names filters them) go out as INT64 tensors of shape
[batch, tokens]; the first output tensor of the reply is read back and reshaped. Protocols:
v2 REST (Open Inference Protocol), grpc-v2, and v1 (`{"instances": [{name: row, ...}]}` ->
`{"predictions": [...]}`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from engines.errors import EngineError, ErrorCode
from engines.backend import LoadedBackend
from engines.pooling import pool
from engines.loader import LoadedModel, Pooling
from engines.tasks import Task
from engines.types import (
    ClassificationResult,
    EmbeddingResult,
    FillMaskResult,
    RequestContext,
    TokenClassificationResult,
)


@dataclass(frozen=True)
class PredictorConfig:
    host: str
    model_name: str
    protocol: str = "v1"  # v1 | v2 | grpc-v2
    use_ssl: bool = False
    timeout_s: float = 600.0
    retries: int = 0
    tensor_input_names: tuple[str, ...] = ()
    return_token_type_ids: bool = False
    health_check: bool = False


def _unavailable(detail: str) -> EngineError:
    return EngineError(ErrorCode.UNAVAILABLE, f"The predictor did not answer: {detail}")


class PredictorClient:
    """Sends named INT64 tensors [batch, tokens] and returns (shape, flat data) of output 0."""

    def __init__(self, config: PredictorConfig) -> None:
        self.config = config
        scheme = "https" if config.use_ssl else "http"
        self._base = config.host if "://" in config.host else f"{scheme}://{config.host}"
        self._http: httpx.AsyncClient | None = None
        self._grpc: Any = None

    async def start(self) -> None:
        if self.config.protocol == "grpc-v2":
            import grpc

            from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

            target = self.config.host.split("://", 1)[-1]
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials()) if self.config.use_ssl else grpc.aio.insecure_channel(target)
            self._grpc = pb_grpc.GRPCInferenceServiceStub(channel)
            self._channel = channel
        else:
            transport = httpx.AsyncHTTPTransport(retries=self.config.retries)
            self._http = httpx.AsyncClient(base_url=self._base, timeout=self.config.timeout_s, transport=transport)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._grpc is not None:
            await self._channel.close()

    async def ready(self) -> bool:
        try:
            if self._grpc is not None:
                from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb

                return (await self._grpc.ServerReady(pb.ServerReadyRequest(), timeout=5)).ready
            assert self._http is not None
            return (await self._http.get("/v2/health/ready", timeout=5)).status_code == 200
        except Exception:
            return False

    async def infer(self, tensors: dict[str, list[list[int]]]) -> tuple[list[int], list[float]]:
        name = self.config.model_name
        if self._grpc is not None:
            return await self._infer_grpc(tensors)
        assert self._http is not None
        if self.config.protocol == "v2":
            body = {"inputs": [
                {"name": key, "datatype": "INT64", "shape": [len(rows), len(rows[0])], "data": [x for r in rows for x in r]}
                for key, rows in tensors.items()
            ]}
            reply = await self._post(f"/v2/models/{name}/infer", body)
            out = reply["outputs"][0]
            return list(out["shape"]), list(out["data"])
        rows = len(next(iter(tensors.values())))
        body = {"instances": [{key: tensors[key][i] for key in tensors} for i in range(rows)]}
        predictions = torch.tensor((await self._post(f"/v1/models/{name}:predict", body))["predictions"], dtype=torch.float32)
        return list(predictions.shape), predictions.flatten().tolist()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        for attempt in range(self.config.retries + 1):
            try:
                r = await self._http.post(path, json=body)
            except httpx.HTTPError as exc:
                if attempt < self.config.retries:
                    continue
                raise _unavailable(type(exc).__name__) from None
            if r.status_code >= 500 and attempt < self.config.retries:
                continue
            if r.status_code != 200:
                raise _unavailable(f"HTTP {r.status_code} {r.text[:200]}")
            return r.json()
        raise _unavailable("no attempt succeeded")

    async def _infer_grpc(self, tensors: dict[str, list[list[int]]]) -> tuple[list[int], list[float]]:
        import grpc

        from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb

        request = pb.ModelInferRequest(model_name=self.config.model_name)
        for key, rows in tensors.items():
            t = request.inputs.add(name=key, datatype="INT64", shape=[len(rows), len(rows[0])])
            t.contents.int64_contents.extend(x for r in rows for x in r)
        try:
            reply = await self._grpc.ModelInfer(request, timeout=self.config.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(f"{exc.code().name}: {exc.details()}") from None
        out = reply.outputs[0]
        contents = out.contents
        data = list(contents.fp32_contents or contents.fp64_contents or contents.int64_contents)
        if reply.raw_output_contents:
            import struct

            raw = reply.raw_output_contents[0]
            fmt = {"FP32": "f", "FP64": "d", "INT64": "q"}[out.datatype]
            data = list(struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw))
        return list(out.shape), data


class PredictorEngine(LoadedBackend):
    """Encoder tasks answered by a remote predictor; tokenization and post-processing stay here."""

    def __init__(self, loaded: LoadedModel, *, served_name: str, predictor: PredictorConfig) -> None:
        super().__init__(loaded, served_name=served_name, extra={"predictor": predictor.host, "protocol": predictor.protocol})
        self._client = PredictorClient(predictor)
        self._config = predictor
        self._pooling = loaded.pooling or Pooling()
        pad = loaded.hf_tokenizer.pad_token_id
        self._pad_id = 0 if pad is None else int(pad)
        self._served = 0

    async def start(self) -> None:
        await self._client.start()

    async def stop(self) -> None:
        await self._client.stop()

    async def check_health(self) -> bool:
        return await self._client.ready() if self._config.health_check else True

    def stats(self) -> dict[str, int]:
        return {"running": 0, "waiting": 0, "completed_total": self._served}

    def abort(self, request_id: str) -> None:
        return None  # predictor calls are short and not interruptible

    async def _forward(self, task: Task, inputs: Sequence[Sequence[int]], pad_to: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad, send, and return (output reshaped to [batch, ...], attention mask)."""
        width = max(max(len(ids) for ids in inputs), pad_to)
        ids = [list(x) + [self._pad_id] * (width - len(x)) for x in inputs]
        mask = [[1] * len(x) + [0] * (width - len(x)) for x in inputs]
        tensors = {"input_ids": ids, "attention_mask": mask}
        if self._config.return_token_type_ids:
            tensors["token_type_ids"] = [[0] * width for _ in inputs]
        if self._config.tensor_input_names:
            tensors = {k: v for k, v in tensors.items() if k in self._config.tensor_input_names}
        shape, data = await self._client.infer(tensors)
        self._served += len(inputs)
        out = torch.tensor(data, dtype=torch.float32).reshape(shape)
        if out.shape[0] != len(inputs):
            raise EngineError(ErrorCode.UNAVAILABLE, f"The predictor answered {out.shape[0]} rows for {len(inputs)} inputs.")
        return out, torch.tensor(mask)

    async def classify(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[ClassificationResult]:
        out, _ = await self._forward(Task.sequence_classification, inputs)
        return [ClassificationResult(tuple(row.tolist()), self._labels, len(ids)) for row, ids in zip(out, inputs)]

    async def classify_tokens(self, inputs: Sequence[Sequence[int]], ctx: RequestContext, pad_to: int | None = None) -> list[TokenClassificationResult]:
        out, _ = await self._forward(Task.token_classification, inputs, pad_to or 0)
        return [
            TokenClassificationResult(tuple(tuple(t) for t in row[: max(len(ids), pad_to or 0)].tolist()), self._labels, tuple(ids), len(ids))
            for row, ids in zip(out, inputs)
        ]

    async def fill_mask(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[FillMaskResult]:
        mask_id = self._loaded.hf_tokenizer.mask_token_id
        if any(mask_id not in ids for ids in inputs):
            raise EngineError(ErrorCode.INVALID_REQUEST, "Every input needs at least one mask token.", param="input")
        out, _ = await self._forward(Task.fill_mask, inputs)
        results = []
        for row, ids in zip(out, inputs):
            positions = [i for i, t in enumerate(ids) if t == mask_id]
            results.append(FillMaskResult(tuple(positions), tuple(tuple(r) for r in row[positions].tolist()), len(ids)))
        return results

    async def embed(self, inputs: Sequence[Sequence[int]], ctx: RequestContext) -> list[EmbeddingResult]:
        out, mask = await self._forward(Task.text_embedding, inputs)
        vectors = await asyncio.to_thread(lambda: pool(out, mask, self._pooling).tolist())
        return [EmbeddingResult(tuple(v), len(ids)) for v, ids in zip(vectors, inputs)]
