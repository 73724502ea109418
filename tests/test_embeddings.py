"""Embeddings on the packaged all-MiniLM-L6-v2, checked against an independent computation."""

import base64
import math
import struct

import openai
import pytest

from engines import RequestContext
from engines.microbatch import length_groups

TEXTS = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    """sentence-transformers' recipe for this model, written out by hand with plain transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()

    def embed(text):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            states = model(**enc).last_hidden_state[0]
        vec = states.mean(dim=0)
        return (vec / vec.norm()).tolist()

    return embed


def close(a, b, tol=1e-4):
    return len(a) == len(b) and all(abs(x - y) < tol for x, y in zip(a, b))


def cos(a, b):
    return sum(x * y for x, y in zip(a, b))


async def test_engine_is_inferred_from_sentence_transformers_files(minilm_engine):
    caps = minilm_engine.capabilities
    assert [t.value for t in caps.tasks] == ["text_embedding"]
    assert caps.max_model_len == 256 and caps.extra["pooling"] == "mean" and caps.extra["normalize"]


async def test_float_embeddings_match_the_reference(minilm_client, reference):
    r = await minilm_client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2] and r.object == "list" and r.model == "minilm"
    for d, text in zip(r.data, TEXTS):
        assert close(d.embedding, reference(text)) and math.isclose(sum(v * v for v in d.embedding), 1, rel_tol=1e-5)
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(TEXTS)
    a, b, c = (d.embedding for d in r.data)
    assert cos(a, b) > cos(a, c) + 0.3


async def test_sdk_default_base64_is_little_endian_float32(minilm_client, minilm_engine):
    floats = (await minilm_client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")).data[0].embedding
    sdk_default = (await minilm_client.embeddings.create(model="minilm", input=TEXTS[0])).data[0].embedding  # SDK sends base64
    assert close(sdk_default, floats, 1e-6)
    raw = await minilm_client.embeddings.with_raw_response.create(model="minilm", input=TEXTS[0], encoding_format="base64")
    blob = base64.b64decode(raw.http_response.json()["data"][0]["embedding"])
    assert close(list(struct.unpack(f"<{len(blob) // 4}f", blob)), floats, 1e-6)


async def test_input_forms_agree_and_batching_equals_singles(minilm_client, minilm_engine):
    ids = minilm_engine.tokenizer.encode(TEXTS[0])
    forms = [TEXTS[0], [TEXTS[0]], ids, [ids]]
    vectors = [(await minilm_client.embeddings.create(model="minilm", input=f, encoding_format="float")).data[0].embedding for f in forms]
    assert all(v == vectors[0] for v in vectors)
    batch = (await minilm_client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")).data
    for d, text in zip(batch, TEXTS):
        single = (await minilm_client.embeddings.create(model="minilm", input=text, encoding_format="float")).data[0]
        assert close(d.embedding, single.embedding, 1e-5)


async def test_dimensions_truncate_and_renormalise(minilm_client):
    full = (await minilm_client.embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")).data[0].embedding
    short = (await minilm_client.embeddings.create(model="minilm", input=TEXTS[0], dimensions=64, encoding_format="float")).data[0].embedding
    norm = math.sqrt(sum(v * v for v in full[:64]))
    assert len(short) == 64 and close(short, [v / norm for v in full[:64]], 1e-6)


@pytest.mark.parametrize(
    "kw,code,param",
    [
        ({"input": ""}, "invalid_value", "input"),
        ({"input": []}, "invalid_value", "input"),
        ({"input": ["ok", ""]}, "invalid_value", "input"),
        ({"input": "x", "dimensions": 0}, "invalid_value", "dimensions"),
        ({"input": "x", "dimensions": 385}, "invalid_value", "dimensions"),
        ({"input": "x", "encoding_format": "hex"}, "invalid_value", "encoding_format"),
        ({"input": "word " * 300}, "context_length_exceeded", "input"),
        ({"input": [[10**7]]}, "invalid_token_id", "input"),
    ],
)
async def test_embedding_errors(minilm_client, kw, code, param):
    with pytest.raises(openai.BadRequestError) as exc:
        await minilm_client.embeddings.create(model="minilm", encoding_format=kw.pop("encoding_format", "float"), **kw)
    assert (exc.value.code, exc.value.param) == (code, param)


async def test_truncation_makes_long_inputs_fit(minilm_client):
    r = await minilm_client.embeddings.create(model="minilm", input="word " * 300, encoding_format="float", extra_body={"truncate_prompt_tokens": 256})
    assert r.usage.prompt_tokens == 256


async def test_wrong_model_kind_is_a_400(minilm_client, client):
    with pytest.raises(openai.BadRequestError) as exc:
        await minilm_client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "unsupported_model" and "embedding model" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        await client.embeddings.create(model="tiny", input="hi")
    assert exc.value.code == "unsupported_model" and "does not serve embeddings" in exc.value.message


async def test_concurrent_requests_are_micro_batched_and_equal_singles(minilm_engine, minilm_client):
    import asyncio

    sentences = [f"Sentence number {i} is about {'cats' if i % 2 else 'the stock market and interest rates'}." for i in range(24)]
    singles = []
    for s in sentences:  # one at a time: each is its own forward pass
        singles.append((await minilm_client.embeddings.create(model="minilm", input=s, encoding_format="float")).data[0].embedding)
    together = await asyncio.gather(*(minilm_client.embeddings.create(model="minilm", input=s, encoding_format="float") for s in sentences))
    for one, many in zip(singles, together):
        assert close(many.data[0].embedding, one, 1e-6)
    if minilm_engine.capabilities.engine == "transformers":  # our micro-batcher (vLLM batches in its scheduler)
        # Requests submitted together share passes (one per length group), with no wait configured.
        ids = [minilm_engine.tokenizer.encode(s) for s in sentences]
        before = minilm_engine.stats().batches_total
        direct = await asyncio.gather(*(minilm_engine.embed([x], RequestContext(f"b{i}")) for i, x in enumerate(ids)))
        groups = len(length_groups([len(x) for x in ids], max_size=64))
        assert minilm_engine.stats().batches_total - before == groups < len(sentences)
        for one, (many,) in zip(singles, direct):
            assert close(list(many.embedding), one, 1e-6)


def test_length_groups_bound_padding():
    from engines.microbatch import length_groups

    lengths = [5, 40, 6, 41, 7, 100, 8]
    groups = length_groups(lengths, max_size=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= 3 and max(lengths[i] for i in g) <= 1.25 * min(lengths[i] for i in g) + 8
