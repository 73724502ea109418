"""v1 and v2 JSON bodies <-> Python values. No engine calls here."""

from __future__ import annotations

import math
from typing import Any

from compat.kserve.errors import invalid_input


def v1_texts(body: Any) -> list[str]:
    """`{"instances": [...]}` (or `inputs`) of strings."""
    if not isinstance(body, dict):
        raise invalid_input("Unrecognized request format: the body must be a JSON object.")
    items = body.get("instances", body.get("inputs"))
    if not isinstance(items, list) or not items:
        raise invalid_input('Expected "instances" (or "inputs") to be a non-empty list.')
    return [_text(item, f"instances[{i}]") for i, item in enumerate(items)]


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
    return [_text(x, f"inputs[0].data[{i}]") for i, x in enumerate(flat)]


def _flatten(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _text(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_input(f"{where} is not valid UTF-8.") from None
    if not isinstance(value, str) or not value:
        raise invalid_input(f"{where} must be a non-empty string.")
    return value


def tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    """A v2 output tensor; the shape is that of the nested list, the data flattened."""
    shape: list[int] = []
    probe: Any = data
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    return {"name": name, "shape": shape, "datatype": datatype, "parameters": None, "data": list(_flatten(data))}


def rounded(value: float, digits: int = 4) -> float:
    return round(value, digits) if math.isfinite(value) else value
