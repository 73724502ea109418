"""KServe transformer mode: tokenize here, a remote predictor runs the model, post-process here.
REST predictors are mocked at the HTTP layer with respx, answering with the real tiny model's
logits; the gRPC predictor is a real server on loopback running the same model."""


import grpc
import httpx
import pytest
import respx
import torch

from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.server import build_predictor_engine
from gateway.settings import Settings
from tests.conftest import free_port, make_app

SENTENCES = ["Hello, my dog is cute.", "I did not like this film at all."]


def tiny_forward(model_dir, arch, input_ids, attention_mask):
    import transformers

    model = getattr(transformers, arch).from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask)).logits


def settings_for(model_dir, predictor, protocol):
    return Settings(model_name="remote", model_dir=str(model_dir), predictor_host=predictor, predictor_protocol=protocol,
                    disable_log_requests=True)


async def answers(settings):
    engine = build_predictor_engine(settings)
    await engine.start()
    try:
        app = make_app(engine, **{k: getattr(settings, k) for k in ("predictor_host", "predictor_protocol", "model_dir")})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            r = await http.post("/v1/models/remote:predict", json={"instances": SENTENCES})
            return r.status_code, r.json()
    finally:
        await engine.stop()


async def local_answers(engine):
    app = make_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        name = engine.capabilities.model_name
        return (await http.post(f"/v1/models/{name}:predict", json={"instances": SENTENCES})).json()


@pytest.mark.parametrize("protocol", ["v2", "v1"])
async def test_rest_predictor_gives_the_local_answers(tiny_bert_dirs, encoder_engines, protocol):
    model_dir = tiny_bert_dirs["sequence_classification"]
    seen = []

    def predictor(request):
        import json

        body = json.loads(request.content)
        if protocol == "v2":
            tensors = {t["name"]: t for t in body["inputs"]}
            shape = tensors["input_ids"]["shape"]
            ids = torch.tensor(tensors["input_ids"]["data"]).reshape(shape).tolist()
            mask = torch.tensor(tensors["attention_mask"]["data"]).reshape(shape).tolist()
        else:
            ids = [row["input_ids"] for row in body["instances"]]
            mask = [row["attention_mask"] for row in body["instances"]]
        seen.append(ids)
        logits = tiny_forward(model_dir, "BertForSequenceClassification", ids, mask)
        if protocol == "v2":
            return httpx.Response(200, json={"outputs": [{"name": "output-0", "datatype": "FP32", "shape": list(logits.shape), "data": logits.flatten().tolist()}]})
        return httpx.Response(200, json={"predictions": logits.tolist()})

    with respx.mock(assert_all_called=True) as mock:
        path = "/v2/models/remote/infer" if protocol == "v2" else "/v1/models/remote:predict"
        mock.post(f"http://predictor.local{path}").mock(side_effect=predictor)
        status, remote = await answers(settings_for(model_dir, "predictor.local", protocol))
    assert status == 200 and remote == await local_answers(encoder_engines["sequence_classification"])
    assert len(seen) == 1 and len(seen[0]) == 2  # one batched call


async def test_predictor_failures_are_503(tiny_bert_dirs):
    model_dir = tiny_bert_dirs["sequence_classification"]
    with respx.mock() as mock:
        mock.post("http://predictor.local/v2/models/remote/infer").mock(return_value=httpx.Response(500, text="boom"))
        status, body = await answers(settings_for(model_dir, "predictor.local", "v2"))
    assert status == 503 and "predictor" in body["error"]
    with respx.mock() as mock:
        mock.post("http://predictor.local/v2/models/remote/infer").mock(side_effect=httpx.ConnectError("refused"))
        status, body = await answers(settings_for(model_dir, "predictor.local", "v2"))
    assert status == 503 and "ConnectError" in body["error"]


class TinyPredictor(pb_grpc.GRPCInferenceServiceServicer):
    """A real gRPC predictor: runs the tiny token classifier on the tensors it receives."""

    def __init__(self, model_dir):
        self.model_dir = model_dir

    async def ModelInfer(self, request, context):
        tensors = {t.name: torch.tensor(list(t.contents.int64_contents)).reshape(list(t.shape)) for t in request.inputs}
        logits = tiny_forward(self.model_dir, "BertForTokenClassification", tensors["input_ids"].tolist(), tensors["attention_mask"].tolist())
        reply = pb.ModelInferResponse(model_name=request.model_name)
        out = reply.outputs.add(name="output-0", datatype="FP32", shape=list(logits.shape))
        out.contents.fp32_contents.extend(logits.flatten().tolist())
        return reply

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)


async def test_grpc_predictor_gives_the_local_answers(tiny_bert_dirs, encoder_engines):
    model_dir = tiny_bert_dirs["token_classification"]
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(TinyPredictor(model_dir), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        settings = settings_for(model_dir, f"127.0.0.1:{port}", "grpc-v2").replace(enable_predictor_health_check=True)
        engine = build_predictor_engine(settings)
        await engine.start()
        assert await engine.check_health()
        await engine.stop()
        status, remote = await answers(settings)
    finally:
        await server.stop(0)
    local = await local_answers(encoder_engines["token_classification"])
    assert status == 200
    for got, want in zip(remote["predictions"], local["predictions"]):
        assert got == want


def test_transformer_mode_refuses_generative_models(tiny_dir):
    from gateway.server import StartupError

    with pytest.raises(StartupError, match="encoder tasks only"):
        build_predictor_engine(settings_for(tiny_dir, "predictor.local", "v2"))
