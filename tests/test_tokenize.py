"""vLLM-shaped /tokenize and /detokenize."""

import pytest

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]


@pytest.mark.parametrize("prefix", ["/openai", ""])
async def test_prompt_form_round_trip(http, tiny_engine, prefix):
    r = await http.post(f"{prefix}/tokenize", json={"model": "tiny", "prompt": "Hello world", "return_token_strs": True})
    body = r.json()
    assert body["tokens"] == tiny_engine.tokenizer.encode("Hello world") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 4096 and len(body["token_strs"]) == body["count"]
    no_special = (await http.post(f"{prefix}/tokenize", json={"prompt": "Hello world", "add_special_tokens": False})).json()
    assert no_special["token_strs"] is None
    back = (await http.post(f"{prefix}/detokenize", json={"model": "tiny", "tokens": body["tokens"]})).json()
    assert back == {"prompt": "Hello world"}


async def test_chat_form_counts_exactly_what_chat_completions_bills(http, client):
    for extra in ({}, {"add_generation_prompt": False}, {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        count = (await http.post("/tokenize", json={"model": "tiny", "messages": MSG, **extra})).json()["count"]
        r = await client.chat.completions.create(model="tiny", messages=MSG, max_tokens=1, extra_body=extra)
        assert count == r.usage.prompt_tokens


async def test_tokenize_errors(http):
    for body, param in (({"model": "tiny"}, None), ({"prompt": "x", "messages": MSG}, None), ({"prompt": "x", "model": "nope"}, "model")):
        r = await http.post("/tokenize", json=body)
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param
    r = await http.post("/detokenize", json={"tokens": [10**9]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_token_id"
