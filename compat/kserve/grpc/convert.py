"""Protobuf messages <-> the Python values the data plane works with."""

from __future__ import annotations

import struct
from typing import Any

from compat.kserve.codecs import pack_bytes, text, unpack_bytes
from compat.kserve.types import InferRequest, InferResponse
from compat.kserve.errors import invalid_input
from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb

# Typed contents field per datatype; FP16/BF16 have none (raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_RAW_FORMAT = {"INT64": "q", "INT32": "i", "FP64": "d", "FP32": "f", "BOOL": "?"}


def infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """The protobuf request as the typed v2 request (texts decoded as REST decodes them)."""
    texts = [text(item, f"inputs[0].contents[{i}]") for i, item in enumerate(request_texts(request))]
    return InferRequest(request.model_name, texts, request_parameters(request), request.id or None)


def request_texts(request: pb.ModelInferRequest) -> list[bytes | str]:
    """The first input tensor's elements (KServe reads only that one)."""
    if not request.inputs:
        raise invalid_input("The request has no inputs.")
    raw = list(request.raw_input_contents)
    if raw:
        if len(raw) != len(request.inputs):
            raise invalid_input(
                f"raw_input_contents has {len(raw)} entries but the request has {len(request.inputs)} inputs; "
                "they must match one to one."
            )
        if any(t.HasField("contents") for t in request.inputs):
            raise invalid_input("An input cannot have contents when raw_input_contents is used.")
    first = request.inputs[0]
    if first.datatype != "BYTES":
        raise invalid_input(f"Input {first.name!r} must have datatype BYTES (text), got {first.datatype!r}.")
    items: list[bytes | str] = unpack_bytes(raw[0]) if raw else list(first.contents.bytes_contents)
    if not items:
        raise invalid_input(f"Input {first.name!r} has no elements.")
    return items


def request_parameters(request: pb.ModelInferRequest) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in request.parameters.items()
            if value.WhichOneof("parameter_choice")}


def response_message(infer: InferResponse, *, raw: bool) -> pb.ModelInferResponse:
    """The typed v2 response as protobuf; raw contents if asked."""
    response = pb.ModelInferResponse(model_name=infer.model_name, model_version=infer.model_version or "", id=infer.id)
    for out in infer.outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        data = out.data
        if raw:
            if out.datatype == "BYTES":
                response.raw_output_contents.append(pack_bytes([str(x).encode() for x in data]))
            else:
                fmt = _RAW_FORMAT[out.datatype]
                response.raw_output_contents.append(struct.pack(f"<{len(data)}{fmt}", *data))
        elif out.datatype == "BYTES":
            tensor.contents.bytes_contents.extend(str(x).encode() for x in data)
        else:
            getattr(tensor.contents, CONTENTS_FIELD[out.datatype]).extend(data)
    return response


def metadata_message(meta: dict[str, Any]) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(name=meta["name"], platform=meta["platform"])
    for spec, target in ((meta["inputs"], response.inputs), (meta["outputs"], response.outputs)):
        for t in spec:
            target.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return response
