"""KServe v1 and v2 REST on every task: KServe's paths and shapes, v1 == v2, expected values from
plain transformers, and KServe's error envelope."""

import httpx
import pytest
import torch

from tests.conftest import make_app
from tests.helpers import reference_logits, reference_padded_logits

SENTENCES = ["Hello, my dog is cute.", "I did not like this film at all, it was long and dull."]
MASKED = ["The capital of France is [MASK].", "The [MASK] of [MASK] is paris."]


def client_for(engine):
    app = make_app(engine, disable_log_requests=True)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def both(http, name, texts):
    v1 = await http.post(f"/v1/models/{name}:predict", json={"instances": texts})
    v2 = await http.post(f"/v2/models/{name}/infer", json={"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]})
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text
    return v1.json(), v2.json()


async def test_sequence_classification(encoder_engines, tiny_bert_dirs):
    async with client_for(encoder_engines["sequence_classification"]) as http:
        v1, v2 = await both(http, "sequence_classification", SENTENCES)
    expected = [int(l.argmax()) for _, l in reference_logits(tiny_bert_dirs["sequence_classification"], "BertForSequenceClassification", SENTENCES)]
    assert v1 == {"predictions": expected}
    (out,) = v2["outputs"]
    assert (out["name"], out["datatype"], out["shape"], out["data"]) == ("output-0", "INT64", [2], expected)
    assert v2["model_name"] == "sequence_classification" and v2["model_version"] is None and v2["id"]


async def test_token_classification_is_padded_as_kserve_pads_it(encoder_engines, tiny_bert_dirs):
    """KServe runs the instances as one batch padded to the longest and returns a label for every
    position, padding included: so do we, by default, whatever our own micro-batching did."""
    async with client_for(encoder_engines["token_classification"]) as http:
        v1, v2 = await both(http, "token_classification", SENTENCES)
    logits = reference_padded_logits(tiny_bert_dirs["token_classification"], "BertForTokenClassification", SENTENCES)
    expected = [[row.argmax(-1).tolist()] for row in logits]
    width = logits.shape[1]
    own_lengths = {len(ids) for ids, _ in reference_logits(tiny_bert_dirs["token_classification"], "BertForTokenClassification", SENTENCES)}
    assert len(own_lengths) == 2 and max(own_lengths) == width  # one input really is padded
    assert v1 == {"predictions": expected}
    (out,) = v2["outputs"]
    assert out["datatype"] == "INT64" and out["shape"] == [2, 1, width]
    assert out["data"] == [x for e in expected for x in e[0]]


async def test_ragged_token_classification_on_request(encoder_engines, tiny_bert_dirs):
    async with options_client(encoder_engines["token_classification"], ragged_token_classification=True) as http:
        v1, v2 = await both(http, "token_classification", SENTENCES)
    ref = reference_logits(tiny_bert_dirs["token_classification"], "BertForTokenClassification", SENTENCES)
    expected = [[l.argmax(-1).tolist()] for _, l in ref]
    assert v1 == {"predictions": expected}
    width = max(len(e[0]) for e in expected)
    (out,) = v2["outputs"]
    assert out["datatype"] == "INT64" and out["shape"] == [2, 1, width]
    flat = [x for e in expected for x in e[0] + [-1] * (width - len(e[0]))]
    assert out["data"] == flat


async def test_fill_mask(encoder_engines, tiny_bert_dirs):
    engine = encoder_engines["fill_mask"]
    async with client_for(engine) as http:
        v1, v2 = await both(http, "fill_mask", MASKED)
    expected = []
    for ids, logits in reference_logits(tiny_bert_dirs["fill_mask"], "BertForMaskedLM", MASKED):
        positions = [i for i, t in enumerate(ids) if t == engine.tokenizer.hf.mask_token_id]
        expected.append(" ".join(engine.tokenizer.decode([int(logits[p].argmax())]).strip() for p in positions))
    assert v1 == {"predictions": expected}
    assert v2["outputs"][0]["datatype"] == "BYTES" and v2["outputs"][0]["data"] == expected


async def test_embeddings_match_the_openai_face(minilm_engine):
    async with client_for(minilm_engine) as http:
        v1, v2 = await both(http, "minilm", SENTENCES)
        openai = (await http.post("/openai/v1/embeddings", json={"input": SENTENCES, "encoding_format": "float"})).json()
    vectors = [d["embedding"] for d in openai["data"]]
    assert v1 == {"predictions": vectors}
    (out,) = v2["outputs"]
    assert out["datatype"] == "FP64" and out["shape"] == [2, 384] and out["data"] == [x for v in vectors for x in v]


async def test_generation_over_v1_and_v2_equals_openai(tiny_engine):
    async with client_for(tiny_engine) as http:
        body = {"instances": ["Once upon a time"], "parameters": {"max_tokens": 8}}
        v1 = (await http.post("/v1/models/tiny:predict", json=body)).json()
        v2 = (await http.post("/v2/models/tiny/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Once upon a time"]}],
                                                             "parameters": {"max_tokens": 8}})).json()
        openai = (await http.post("/openai/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})).json()
    assert v1["predictions"] == v2["outputs"][0]["data"] == [openai["choices"][0]["text"]]


async def test_health_metadata_and_readiness(encoder_engines):
    async with client_for(encoder_engines["sequence_classification"]) as http:
        assert (await http.get("/v2")).json()["extensions"] == ["model_repository_extension", "model_configuration", "statistics", "binary_tensor_data"]
        assert (await http.get("/v2/health/live")).json() == {"live": True}
        assert (await http.get("/v2/health/ready")).json() == {"ready": True}
        assert (await http.get("/v1/models")).json() == {"models": ["sequence_classification"]}
        assert (await http.get("/v2/models")).json() == {"models": ["sequence_classification"]}
        assert (await http.get("/v1/models/sequence_classification")).json() == {"name": "sequence_classification", "ready": True}
        assert (await http.get("/v2/models/sequence_classification/ready")).json() == {"name": "sequence_classification", "ready": True}
        meta = (await http.get("/v2/models/sequence_classification")).json()
        assert meta["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]
        # The class indices' names, from the model's config (predictions stay numeric).
        assert meta["parameters"] == {"id2label": {"0": "negative", "1": "neutral", "2": "positive"}}
        assert (await http.get("/")).json() == {"status": "alive"}


@pytest.mark.parametrize(
    "method,path,body,status,message",
    [
        ("post", "/v1/models/nope:predict", {"instances": ["x"]}, 404, "Model with name nope does not exist."),
        ("get", "/v2/models/nope", None, 404, "Model with name nope does not exist."),
        ("post", "/v1/models/sequence_classification:predict", {"instances": []}, 400, 'Expected "instances"'),
        ("post", "/v1/models/sequence_classification:predict", {"instances": [""]}, 400, "non-empty string"),
        ("post", "/v1/models/sequence_classification:predict", {"instances": [3]}, 400, "non-empty string"),
        ("post", "/v1/models/sequence_classification:predict", [1, 2], 400, "JSON object"),
        ("post", "/v2/models/sequence_classification/infer", {"inputs": []}, 400, 'Expected "inputs"'),
        ("post", "/v2/models/sequence_classification/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400, "BYTES"),
        ("post", "/v2/models/sequence_classification/infer", {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1]}]}, 400, "no data"),
        ("post", "/v1/models/sequence_classification:explain", {"instances": ["x"]}, 501, "explainer"),
        ("get", "/v2/models/sequence_classification/versions/1", None, 501, "versioning"),
        ("post", "/v2/models/sequence_classification/versions/1/infer", {"inputs": []}, 501, "versioning"),
    ],
)
async def test_errors_use_kserves_envelope(encoder_engines, method, path, body, status, message):
    async with client_for(encoder_engines["sequence_classification"]) as http:
        r = await getattr(http, method)(path, **({"json": body} if body is not None else {}))
        assert r.status_code == status and message in r.json()["error"], r.text
        r = await http.post("/v1/models/sequence_classification:predict", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("Unrecognized request format")
        ok = await http.post("/v1/models/sequence_classification:predict", json={"instances": ["still serving"]})
        assert ok.status_code == 200


async def test_long_inputs_are_truncated_like_kserve(encoder_engines):
    async with client_for(encoder_engines["sequence_classification"]) as http:
        r = await http.post("/v1/models/sequence_classification:predict", json={"instances": ["word " * 500]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def options_client(engine, **settings):
    app = make_app(engine, disable_log_requests=True, **settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_return_probabilities_and_raw_logits(encoder_engines, tiny_bert_dirs):
    engine = encoder_engines["sequence_classification"]
    ref = reference_logits(tiny_bert_dirs["sequence_classification"], "BertForSequenceClassification", SENTENCES)
    async with options_client(engine, return_probabilities=True) as http:
        v1, v2 = await both(http, "sequence_classification", SENTENCES)
        meta = (await http.get("/v2/models/sequence_classification")).json()
    for got, (_, logits) in zip(v1["predictions"], ref):
        probs = torch.softmax(logits, -1).tolist()
        assert got == {str(j): float(f"{p:.4f}") for j, p in enumerate(probs)}  # JSON object keys are strings
    assert v2["outputs"][0]["datatype"] == "BYTES" and v2["outputs"][0]["data"][0].startswith("{0: ")
    assert meta["outputs"] == [{"name": "output-0", "datatype": "BYTES", "shape": [-1]}]
    async with options_client(engine, return_raw_logits=True) as http:
        v1, _ = await both(http, "sequence_classification", SENTENCES)
    for got, (_, logits) in zip(v1["predictions"], ref):
        assert [got[str(j)] for j in range(3)] == pytest.approx(logits.tolist(), abs=1e-5)


async def test_scored_token_classification_and_fill_mask(encoder_engines):
    async with options_client(encoder_engines["token_classification"], return_probabilities=True) as http:
        v1, _ = await both(http, "token_classification", SENTENCES[:1])
    (tokens,) = v1["predictions"]
    assert all(len(t) == 5 and abs(sum(t.values()) - 1) < 1e-3 for t in tokens)
    async with options_client(encoder_engines["fill_mask"], return_raw_logits=True) as http:
        v1, _ = await both(http, "fill_mask", MASKED[:1])
    (masks,) = v1["predictions"]
    vocab = encoder_engines["fill_mask"].capabilities.vocab_size
    assert len(masks) == 1 and len(masks[0]) == vocab and list(masks[0][5]) == ["5"]


async def test_disable_special_tokens(encoder_engines):
    async with options_client(encoder_engines["token_classification"], disable_special_tokens=True) as http:
        without, _ = await both(http, "token_classification", SENTENCES[:1])
    async with client_for(encoder_engines["token_classification"]) as http:
        with_special, _ = await both(http, "token_classification", SENTENCES[:1])
    assert len(with_special["predictions"][0][0]) == len(without["predictions"][0][0]) + 2  # [CLS] and [SEP]


async def test_binary_tensor_extension(encoder_engines):
    import json
    import struct

    texts = [t.encode() for t in SENTENCES]
    blob = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    header = json.dumps({
        "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "output-0", "parameters": {"binary_data": True}}],
    }).encode()
    async with client_for(encoder_engines["sequence_classification"]) as http:
        r = await http.post("/v2/models/sequence_classification/infer", content=header + blob,
                            headers={"inference-header-content-length": str(len(header)), "content-type": "application/octet-stream"})
        json_answer = (await http.post("/v1/models/sequence_classification:predict", json={"instances": SENTENCES})).json()
        bad = await http.post("/v2/models/sequence_classification/infer", content=header + blob[:5],
                              headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:length])
    (out,) = meta["outputs"]
    assert "data" not in out and out["parameters"]["binary_data_size"] == 16
    assert list(struct.unpack("<2q", r.content[length:])) == json_answer["predictions"]
    assert bad.status_code == 400 and "binary" in bad.json()["error"]


async def test_return_offsets_mapping(encoder_engines):
    engine = encoder_engines["token_classification"]
    text = "Paris is lovely."
    async with options_client(engine, return_offsets_mapping=True) as http:
        v1, v2 = await both(http, "token_classification", [text, "Hi"])
    spans = engine.tokenizer.hf(text, return_offsets_mapping=True)["offset_mapping"]
    (v1_offsets,) = v1["outputs"]
    assert v1_offsets["name"] == "offset_mapping" and v1_offsets["datatype"] == "INT64"
    width = len(spans)
    assert v1_offsets["shape"] == [2, width, 2]
    assert v1_offsets["data"][: 2 * width] == [x for span in spans for x in span]
    assert [o["name"] for o in v2["outputs"]] == ["output-0", "offset_mapping"]
    words = [text[a:b] for a, b in spans if b > a]
    assert words == ["Paris", "is", "lovely", "."]


async def test_lower_casing_follows_kserve(tiny_bert_dirs):
    from engines.hf import load_engine
    from engines.loader import ModelSpec

    model_dir = str(tiny_bert_dirs["token_classification"])
    lowered = load_engine(ModelSpec(model_dir=model_dir, do_lower_case=True), served_name="a")
    kept = load_engine(ModelSpec(model_dir=model_dir, do_lower_case=False), served_name="b")
    assert lowered.tokenizer.encode("Berlin") == lowered.tokenizer.encode("berlin")
    assert kept.tokenizer.encode("Berlin") != kept.tokenizer.encode("berlin")


async def test_repository_routes(encoder_engines):
    async with client_for(encoder_engines["sequence_classification"]) as http:
        assert (await http.post("/v2/repository/models/sequence_classification/load")).json() == {"name": "sequence_classification", "load": True}
        assert (await http.post("/v2/repository/models/nope/load")).status_code == 404
        r = await http.post("/v2/repository/models/sequence_classification/unload")
        assert r.status_code == 501 and "not supported" in r.json()["error"]
        assert (await http.get("/v2/models/sequence_classification/ready")).status_code == 200


async def test_beyond_kserve_flags(encoder_engines, tiny_bert_dirs):
    clf = encoder_engines["sequence_classification"]
    async with options_client(clf, return_label_names=True) as http:
        v1, v2 = await both(http, "sequence_classification", SENTENCES)
    names = ["negative", "neutral", "positive"]
    assert v1["outputs"][0]["data"] == [names[i] for i in v1["predictions"]]
    assert [o["name"] for o in v2["outputs"]] == ["output-0", "label_names"]
    async with options_client(clf, return_probabilities=True, scores_as_numbers=True) as http:
        v1, v2 = await both(http, "sequence_classification", SENTENCES)
    (out,) = v2["outputs"]
    assert out["datatype"] == "FP64" and out["shape"] == [2, 3]
    assert out["data"][:3] == [v1["predictions"][0][str(j)] for j in range(3)]
    mlm = encoder_engines["fill_mask"]
    async with options_client(mlm, fill_mask_top_k=3) as http:
        v1, _ = await both(http, "fill_mask", MASKED[:1])
    ((top,),) = v1["predictions"]
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    ids, logits = reference_logits(tiny_bert_dirs["fill_mask"], "BertForMaskedLM", MASKED[:1])[0]
    position = ids.index(mlm.tokenizer.hf.mask_token_id)
    assert top[0]["token_id"] == int(logits[position].argmax())
    ner = encoder_engines["token_classification"]
    async with options_client(ner, return_label_names=True) as http:
        v1, _ = await both(http, "token_classification", SENTENCES[:1])
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert v1["outputs"][0]["data"] == [labels[i] for i in v1["predictions"][0][0]]
