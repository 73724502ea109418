"""Property-based fuzzing: no input makes a 5xx (501, KServe's "not implemented here" for
:explain, versions and unload, is part of its wire contract), every 4xx is in its face's
envelope, and the server keeps serving.

- schemathesis generates requests for every route of the server's OpenAPI schema;
- hypothesis drives the v1/v2 JSON codecs, the binary tensor extension and the gRPC converters
  with arbitrary shapes, datatypes and byte strings.

`FUZZ_EXAMPLES` sets the number of examples per route / property (CI: a short run); the longer
run is `FUZZ_EXAMPLES=500 python -m pytest tests/test_fuzz.py` (see README, Operations).
"""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from compat.kserve import codecs
from compat.kserve.errors import KServeError
from compat.kserve.grpc import convert
from compat.kserve.types import InferResponse, InferTensor
from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from tests.conftest import make_app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
DATATYPES = ["BYTES", "FP32", "FP64", "INT32", "INT64", "BOOL", "UINT8", "FP16", "nonsense", ""]
tensor_dicts = st.fixed_dictionaries(
    {"name": st.text(max_size=8), "datatype": st.sampled_from(DATATYPES), "shape": st.lists(st.integers(-2, 5), max_size=3)},
    optional={"data": json_values, "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2)},
)


def ok_or_client_error(call, *args):
    try:
        return call(*args)
    except KServeError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return None


# -- codecs -------------------------------------------------------------------------------------


@fuzz
@given(st.one_of(json_values, st.fixed_dictionaries({"instances": json_values}), st.fixed_dictionaries({"inputs": st.lists(tensor_dicts, max_size=3)})))
def test_json_codecs_answer_values_or_4xx(body):
    for decode in (codecs.v1_texts, codecs.v2_texts):
        texts = ok_or_client_error(decode, body)
        assert texts is None or (texts and all(isinstance(t, str) and t for t in texts))


@fuzz
@given(st.lists(tensor_dicts, max_size=3), st.binary(max_size=64), st.one_of(st.none(), st.integers(-5, 400).map(str), st.text(max_size=4)))
def test_binary_extension_answers_values_or_4xx(inputs, tail, header_length):
    header = json.dumps({"inputs": inputs}).encode()
    length = str(len(header)) if header_length is None else header_length
    ok_or_client_error(codecs.split_binary_request, header + tail, length)


@fuzz
@given(st.binary(max_size=64))
def test_length_prefixed_bytes_unpack_or_4xx(raw):
    items = ok_or_client_error(codecs.unpack_bytes, raw)
    if items is not None:
        assert codecs.pack_bytes(items) == raw


# -- gRPC converters ------------------------------------------------------------------------------


@st.composite
def infer_requests(draw):
    request = pb.ModelInferRequest(model_name=draw(st.text(max_size=8)), id=draw(st.text(max_size=8)))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(st.text(max_size=6)), datatype=draw(st.sampled_from(DATATYPES)),
                                    shape=draw(st.lists(st.integers(-2, 6), max_size=3)))
        kind = draw(st.sampled_from(["bytes", "fp32", "int64", "none"]))
        if kind == "bytes":
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=12), max_size=4)))
        elif kind == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32, allow_nan=False), max_size=4)))
        elif kind == "int64":
            tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)))
    for raw in draw(st.lists(st.binary(max_size=24), max_size=3)):
        request.raw_input_contents.append(raw)
    for key in draw(st.lists(st.text(max_size=6), max_size=3)):
        value = draw(st.sampled_from(["bool", "int64", "string", "none"]))
        if value == "bool":
            request.parameters[key].bool_param = draw(st.booleans())
        elif value == "int64":
            request.parameters[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif value == "string":
            request.parameters[key].string_param = draw(st.text(max_size=8))
        else:
            request.parameters[key].CopyFrom(pb.InferParameter())
    return request


@fuzz
@given(infer_requests())
def test_grpc_converters_answer_values_or_4xx(request):
    items = ok_or_client_error(convert.request_texts, request)
    assert items is None or len(items) > 0
    assert isinstance(convert.request_parameters(request), dict)


@fuzz
@given(st.lists(st.sampled_from(["BYTES", "FP64", "INT64", "FP32", "INT32", "BOOL"]), min_size=1, max_size=3), st.booleans(), st.data())
def test_grpc_responses_round_trip(datatypes, raw, data):
    values = {
        "BYTES": st.text(max_size=6), "FP64": st.floats(allow_nan=False), "FP32": st.floats(width=32, allow_nan=False),
        "INT64": st.integers(-(2**63), 2**63 - 1), "INT32": st.integers(-(2**31), 2**31 - 1), "BOOL": st.booleans(),
    }
    outputs = []
    for i, dt in enumerate(datatypes):
        items = data.draw(st.lists(values[dt], max_size=4))
        outputs.append({"name": f"out-{i}", "datatype": dt, "shape": [len(items)], "data": items})
    typed = InferResponse("m", "x", [InferTensor(o["name"], o["datatype"], o["shape"], o["data"]) for o in outputs])
    message = convert.response_message(typed, raw=raw)
    assert [o.name for o in message.outputs] == [o["name"] for o in outputs]
    if raw:
        for out, blob in zip(outputs, message.raw_output_contents):
            if out["datatype"] == "BYTES":
                assert codecs.unpack_bytes(blob) == [str(x).encode() for x in out["data"]]
            else:
                assert len(blob) == len(out["data"]) * struct.calcsize(convert._RAW_FORMAT[out["datatype"]])


# -- every HTTP route, from the OpenAPI schema ---------------------------------------------------


class SharedEngine:
    """The session's real engine, which outlives this app: schemathesis runs the app's lifespan,
    whose shutdown would otherwise stop the engine for every later test."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def fuzz_app(tiny_engine):
    # Short generations (a request asking for more is a 400), so the run stays short.
    return make_app(SharedEngine(tiny_engine), enable_grpc=False, max_total_tokens=48, max_n=4, disable_log_requests=True)


def envelope_ok(path: str, status: int, body: object) -> bool:
    if path.startswith("/openai") or path in ("/tokenize", "/detokenize"):
        return isinstance(body, dict) and isinstance(body.get("error"), dict) and bool(body["error"].get("message"))
    return isinstance(body, dict) and bool(body.get("error") or body.get("detail"))


def test_every_route_survives_generated_requests(fuzz_app):
    import schemathesis
    from starlette.testclient import TestClient

    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    failures: list[str] = []
    client = TestClient(fuzz_app)
    for operation in operations:

        @fuzz
        @given(case=operation.as_strategy())
        def run(case):
            try:
                response = case.call(session=client)
            except UnicodeEncodeError:  # a header value HTTP cannot carry: the client's limit, not ours
                reject()
            # 501 is KServe's own answer for what this runtime does not do (:explain, model
            # versions, unload): part of the wire contract, checked like a 4xx.
            if response.status_code >= 500 and response.status_code != 501:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")
            elif response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if not envelope_ok(case.path, response.status_code, body):
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code} outside the envelope: {response.text[:200]}")

        run()
    alive = client.post("/openai/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 2})
    assert alive.status_code == 200, "the server must keep serving after the fuzz run"
    assert not failures, "\n".join(failures[:20])
