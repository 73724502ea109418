"""Typed v2 (Open Inference Protocol) values: what the data plane takes and gives, whatever the
transport. REST turns JSON into them and back (`codecs`), gRPC protobuf (`grpc/convert`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InferTensor:
    """An output tensor: `data` flattened in row-major order, `shape` its dimensions."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": self.shape, "datatype": self.datatype, "parameters": None, "data": self.data}


@dataclass(frozen=True)
class InferRequest:
    """A v2 inference request as the data plane reads it: the first input's texts (KServe reads
    only that one) and the request's parameters."""

    model_name: str
    texts: list[str]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    id: str
    outputs: list[InferTensor]
    model_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "model_version": self.model_version, "id": self.id, "parameters": None,
            "outputs": [t.to_json() for t in self.outputs],
        }
