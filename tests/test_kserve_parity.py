"""Golden payloads shared by v1, v2 REST and gRPC: the three faces answer the same numbers."""

import json
from pathlib import Path

import grpc
import httpx
import pytest

from compat.kserve.dataplane import DataPlane
from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from compat.kserve.grpc.servicer import build_server
from tests.conftest import free_port, make_app

GOLDEN = json.loads((Path(__file__).parent / "golden" / "kserve_inputs.json").read_text())


def grpc_values(out):
    c = out.contents
    return list(c.int64_contents) or list(c.fp64_contents) or [b.decode() for b in c.bytes_contents]


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification", "fill_mask", "text_embedding"])
async def test_v1_v2_grpc_agree(task, encoder_engines, minilm_engine):
    engine = minilm_engine if task == "text_embedding" else encoder_engines[task]
    name = engine.capabilities.model_name
    texts = GOLDEN[task]
    app = make_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        v1 = (await http.post(f"/v1/models/{name}:predict", json={"instances": texts})).json()["predictions"]
        v2 = (await http.post(f"/v2/models/{name}/infer", json={"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]})).json()["outputs"][0]
    server = build_server(DataPlane(engine, name))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = pb.ModelInferRequest(model_name=name)
            request.inputs.add(name="input-0", datatype="BYTES", shape=[len(texts)]).contents.bytes_contents.extend(t.encode() for t in texts)
            out = (await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)).outputs[0]
    finally:
        await server.stop(0)
    flat_v1 = []

    def flatten(x):
        if isinstance(x, list):
            for y in x:
                flatten(y)
        else:
            flat_v1.append(x)

    flatten(v1)
    if task == "token_classification":  # v2/gRPC pad ragged rows with -1; v1 keeps each row's length
        assert [x for x in v2["data"] if x != -1] == flat_v1
    else:
        assert v2["data"] == flat_v1
    assert grpc_values(out) == v2["data"] and list(out.shape) == v2["shape"] and out.datatype == v2["datatype"]
