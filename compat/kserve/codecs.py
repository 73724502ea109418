"""v1 and v2 JSON bodies <-> Python values. No engine calls here."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson

from compat.kserve.errors import invalid_input
from compat.kserve.types import InferRequest, InferTensor


def v1_texts(body: Any) -> list[str]:
    """`{"instances": [...]}` (or `inputs`) of strings."""
    if not isinstance(body, dict):
        raise invalid_input("Unrecognized request format: the body must be a JSON object.")
    items = body.get("instances", body.get("inputs"))
    if not isinstance(items, list) or not items:
        raise invalid_input('Expected "instances" (or "inputs") to be a non-empty list.')
    return [text(item, f"instances[{i}]") for i, item in enumerate(items)]


def v2_texts(body: Any) -> list[str]:
    """The first input tensor's BYTES elements, as KServe reads them (its shape is not checked)."""
    if not isinstance(body, dict):
        raise invalid_input("Unrecognized request format: the body must be a JSON object.")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise invalid_input('Expected "inputs" to be a non-empty list of tensors.')
    tensor = inputs[0]
    if tensor.get("datatype", "BYTES") != "BYTES":
        raise invalid_input(f"Input {tensor.get('name')!r} must have datatype BYTES (text), got {tensor.get('datatype')!r}.")
    data = tensor.get("data")
    if data is None:
        raise invalid_input(f"Input {tensor.get('name')!r} has no data.")
    flat = list(_flatten(data))
    if not flat:
        raise invalid_input(f"Input {tensor.get('name')!r} has no elements.")
    return [text(x, f"inputs[0].data[{i}]") for i, x in enumerate(flat)]


def parameters_of(body: Any, where: str = "parameters") -> dict[str, Any]:
    """A request's `parameters`: absent, null or an object (KServe reads it as a dict)."""
    params = body.get("parameters") if isinstance(body, dict) else None
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid_input(f'"{where}" must be an object, got {type(params).__name__}.')
    return params


def _flatten(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def text(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_input(f"{where} is not valid UTF-8.") from None
    if not isinstance(value, str) or not value:
        raise invalid_input(f"{where} must be a non-empty string.")
    return value


def tensor(name: str, datatype: str, data: list[Any]) -> InferTensor:
    """A v2 output tensor; the shape is that of the nested list, the data flattened."""
    shape: list[int] = []
    probe: Any = data
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    return InferTensor(name, datatype, shape, list(_flatten(data)))


def v2_request(body: Any, model_name: str, request_id: str | None = None) -> InferRequest:
    """A v2 REST body (already JSON) as the typed request; the body's `id` wins over ours."""
    texts = v2_texts(body)
    return InferRequest(model_name, texts, parameters_of(body), body.get("id") or request_id)


def rounded(value: float, digits: int = 4) -> float:
    return round(value, digits) if math.isfinite(value) else value


# -- the binary tensor extension ----------------------------------------------------------------

BINARY_HEADER = "inference-header-content-length"
_BINARY_FORMAT = {"INT64": "q", "INT32": "i", "INT16": "h", "INT8": "b", "UINT8": "B", "FP64": "d", "FP32": "f", "BOOL": "?"}


def unpack_bytes(raw: bytes) -> list[bytes]:
    """BYTES in binary form (the REST binary extension and gRPC raw contents alike): each element
    is a 4-byte little-endian length, then that many bytes."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise invalid_input("Binary BYTES data ends in the middle of a length prefix.")
        size = int.from_bytes(raw[at : at + 4], "little")
        at += 4
        if at + size > len(raw):
            raise invalid_input("A binary BYTES element is longer than the remaining data.")
        items.append(raw[at : at + size])
        at += size
    return items


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def split_binary_request(raw: bytes, header_length: str) -> dict[str, Any]:
    """A request body with binary tensors: the JSON header, then each input's bytes in order."""
    try:
        length = int(header_length)
        header = orjson.loads(raw[:length])
    except (ValueError, orjson.JSONDecodeError):
        raise invalid_input(f"Invalid {BINARY_HEADER} or JSON header.") from None
    if not 0 <= length <= len(raw) or not isinstance(header, dict):
        raise invalid_input(f"{BINARY_HEADER} does not fit the body.")
    at = length
    inputs = header.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise invalid_input('Expected "inputs" to be a list of tensors.')
    for tensor_ in inputs:
        params = tensor_.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid_input(f"Input {tensor_.get('name')!r}: binary_data_size must be a non-negative integer.")
        chunk = raw[at : at + size]
        if len(chunk) != size:
            raise invalid_input(f"Input {tensor_.get('name')!r} declares {size} binary bytes but the body is shorter.")
        at += size
        datatype = tensor_.get("datatype")
        if datatype == "BYTES":
            tensor_["data"] = unpack_bytes(chunk)
        elif isinstance(datatype, str) and datatype in _BINARY_FORMAT:
            fmt = _BINARY_FORMAT[datatype]
            if len(chunk) % struct.calcsize(fmt):
                raise invalid_input(f"Input {tensor_.get('name')!r}: {size} bytes is not a whole number of {datatype} values.")
            tensor_["data"] = list(struct.unpack(f"<{len(chunk) // struct.calcsize(fmt)}{fmt}", chunk))
        else:
            raise invalid_input(f"Binary data of datatype {datatype!r} is not supported.")
    return header


def wants_binary(request_body: dict[str, Any]) -> set[str] | bool:
    """True for all outputs (`binary_data_output`), or the names of outputs asking for binary.
    Checked before inference: a malformed `outputs` is a 400, not a failure after the work."""
    if not isinstance(request_body, dict):
        return set()  # not a v2 request at all: decoding it says so
    if parameters_of(request_body).get("binary_data_output"):
        return True
    outputs = request_body.get("outputs")
    if outputs is None:
        return set()
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise invalid_input('"outputs" must be a list of objects ({"name": ..., "parameters": {...}}).')
    return {str(o.get("name")) for i, o in enumerate(outputs) if parameters_of(o, f"outputs[{i}].parameters").get("binary_data")}


def encode_binary_response(response: dict[str, Any], which: set[str] | bool) -> tuple[bytes, int]:
    """Move the chosen outputs' data into a binary section; return (body, JSON header length)."""
    blobs: list[bytes] = []
    for out in response["outputs"]:
        if which is not True and out["name"] not in which:
            continue
        data = out.pop("data")
        if out["datatype"] == "BYTES":
            blob = pack_bytes([str(x).encode() for x in data])
        else:
            fmt = _BINARY_FORMAT[out["datatype"]]
            blob = struct.pack(f"<{len(data)}{fmt}", *data)
        out["parameters"] = {**(out.get("parameters") or {}), "binary_data_size": len(blob)}
        blobs.append(blob)
    header = orjson.dumps(response)
    return header + b"".join(blobs), len(header)
