"""KServe v2 over gRPC: a real server on loopback, a real client stub, the same answers as REST."""

import filecmp
import struct
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from compat.kserve.dataplane import DataPlane
from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from compat.kserve.grpc.servicer import build_server, mark_serving
from tests.conftest import free_port, make_app

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["Hello, my dog is cute.", "I did not like this film at all."]


@pytest.fixture
async def grpc_for():
    servers = []

    async def start(engine, name):
        server = build_server(DataPlane(engine, name))
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await mark_serving(server, True)
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return channel, pb_grpc.GRPCInferenceServiceStub(channel)

    yield start
    for server in servers:
        await server.stop(0)


def text_request(name, texts, raw=False):
    req = pb.ModelInferRequest(model_name=name)
    tensor = req.inputs.add(name="input-0", datatype="BYTES", shape=[len(texts)])
    if raw:
        req.raw_input_contents.append(b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts))
    else:
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return req


async def test_grpc_equals_rest_for_classification(encoder_engines, grpc_for):
    engine = encoder_engines["sequence_classification"]
    _, stub = await grpc_for(engine, "sst")
    response = await stub.ModelInfer(text_request("sst", SENTENCES))
    (out,) = response.outputs
    app = make_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        rest = (await http.post(f"/v1/models/{engine.capabilities.model_name}:predict", json={"instances": SENTENCES})).json()
    assert (out.name, out.datatype, list(out.shape)) == ("output-0", "INT64", [2])
    assert list(out.contents.int64_contents) == rest["predictions"]


async def test_raw_contents_in_and_out(encoder_engines, grpc_for):
    _, stub = await grpc_for(encoder_engines["sequence_classification"], "sst")
    typed = await stub.ModelInfer(text_request("sst", SENTENCES))
    raw = await stub.ModelInfer(text_request("sst", SENTENCES, raw=True))
    assert len(raw.raw_output_contents) == 1 and not raw.outputs[0].HasField("contents")
    assert list(struct.unpack("<2q", raw.raw_output_contents[0])) == list(typed.outputs[0].contents.int64_contents)


async def test_embeddings_and_generation_over_grpc(minilm_engine, tiny_engine, grpc_for):
    _, stub = await grpc_for(minilm_engine, "minilm")
    out = (await stub.ModelInfer(text_request("minilm", SENTENCES))).outputs[0]
    assert out.datatype == "FP64" and list(out.shape) == [2, 384] and len(out.contents.fp64_contents) == 768
    _, stub = await grpc_for(tiny_engine, "tiny")
    req = text_request("tiny", ["Once upon a time"])
    req.parameters["max_tokens"].int64_param = 5
    out = (await stub.ModelInfer(req)).outputs[0]
    assert out.datatype == "BYTES" and len(out.contents.bytes_contents) == 1 and out.contents.bytes_contents[0]


async def test_health_metadata_reflection(encoder_engines, grpc_for):
    channel, stub = await grpc_for(encoder_engines["token_classification"], "ner")
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="ner"))).ready
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="ner"))
    assert meta.outputs[0].datatype == "INT64" and list(meta.outputs[0].shape) == [-1, 1, -1]
    server_meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server_meta.name == "hf-gateway" and list(server_meta.extensions) == ["model_repository_extension", "model_configuration", "statistics", "binary_tensor_data"]

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        assert (await health.Check(health_pb2.HealthCheckRequest(service=service))).status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert "inference.GRPCInferenceService" in names and "grpc.health.v1.Health" in names


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND),
        (lambda r: r.inputs[0].contents.bytes_contents.__delitem__(slice(None)), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r.inputs[0], "datatype", "FP32"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.raw_input_contents.append(b"\x05\x00\x00\x00ab"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs[0].contents.bytes_contents.__setitem__(0, b"\xff\xfe"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: setattr(r, "model_version", "2"), grpc.StatusCode.UNIMPLEMENTED),
    ],
)
async def test_grpc_errors_have_kserves_status_codes(encoder_engines, grpc_for, mutate, code):
    _, stub = await grpc_for(encoder_engines["sequence_classification"], "sst")
    req = text_request("sst", SENTENCES)
    mutate(req)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ModelInfer(req)
    assert exc.value.code() == code
    assert (await stub.ModelInfer(text_request("sst", SENTENCES))).outputs  # still serving


def test_generated_stubs_are_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_grpc.py"), "--out", str(tmp_path)], check=True)
    committed = ROOT / "compat" / "kserve" / "grpc" / "generated"
    names = ["grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py", "__init__.py"]
    match, mismatch, errors = filecmp.cmpfiles(committed, tmp_path, names, shallow=False)
    assert not mismatch and not errors, f"stale stubs: {mismatch or errors}; run python scripts/gen_grpc.py"
