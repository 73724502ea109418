"""The hostile client's reproductions (`shared/findings/adversary.md`, D1, D5, D7, D20): each is a
4xx in its face's envelope, decided before any generation runs, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from engines.template_pool import TemplateLimits
from tests.conftest import TEST_ENGINE, make_app
from tests.helpers import REFUSED, metric_sample, sse_events

MSG = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "tiny", "messages": MSG, "max_tokens": 2, "temperature": 0}


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120)


def openai_error(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


async def generated_tokens(http: httpx.AsyncClient) -> float:
    return metric_sample((await http.get("/metrics")).text, "gateway_generation_tokens_total")


# -- D1: chat templates ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tokenize", "/openai/v1/chat/completions"])
@pytest.mark.parametrize("trusted", [False, True])
async def test_a_template_in_chat_template_kwargs_never_passes_the_gate(tiny_engine, path, trusted):
    body = {**CHAT, "chat_template_kwargs": {"chat_template": "{{ 7*7 }} {{ messages[0].content }}"}, "return_token_strs": True}
    async with client_for(make_app(tiny_engine, trust_request_chat_template=trusted)) as http:
        err = openai_error(await http.post(path, json=body))
        assert err["param"] == "chat_template_kwargs.chat_template" and "top-level" in err["message"]
        assert (await http.post(path, json=CHAT)).status_code == 200


@pytest.mark.parametrize(
    "key", ["add_generation_prompt", "continue_final_message", "tools", "messages", "conversation", "tokenize", "return_dict", "padding"]
)
async def test_template_kwargs_cannot_override_checked_or_reserved_arguments(http, key):
    err = openai_error(await http.post("/openai/v1/chat/completions", json={**CHAT, "chat_template_kwargs": {key: True}}))
    assert err["param"] == f"chat_template_kwargs.{key}"
    err = openai_error(await http.post("/tokenize", json={"messages": MSG, "chat_template_kwargs": {key: []}}))
    assert err["param"] == f"chat_template_kwargs.{key}"


async def test_ordinary_template_kwargs_still_reach_the_template(tiny_engine):
    template = "{{ greeting }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    async with client_for(make_app(tiny_engine, trust_request_chat_template=True)) as http:
        r = await http.post("/tokenize", json={"messages": MSG, "chat_template": template, "chat_template_kwargs": {"greeting": "Hello "},
                                               "return_token_strs": True})
        assert r.status_code == 200 and "".join(r.json()["token_strs"]).replace("Ġ", " ") == "Hello Hi"


@pytest.fixture
def bounded_templates(tiny_engine):
    app = make_app(tiny_engine, trust_request_chat_template=True, chat_template_timeout=2.0, chat_template_memory_mb=256)
    yield app
    tiny_engine.tokenizer.configure_templates(TemplateLimits())  # the session's other apps use the defaults


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x", "did not finish within 2 s"),
        ("{{ ('a' * 10**8)|length }}", "over the output limit"),
        ("{{ 'a'|center(10**10) }}", "more memory"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}", "memory"),
        ("{% for i in range(50000) %}{{ 'x' * 100 }}{% endfor %}", "rendered prompt is over the limit"),
        ("{{ 2 ** 10000000 }}", "too large"),
        ("{{ ().__class__.__base__.__subclasses__() }}", "does not allow"),
        ("{% for %}", "not valid Jinja"),
    ],
)
async def test_request_templates_are_bounded_in_time_memory_and_output(bounded_templates, template, says):
    async with client_for(bounded_templates) as http:
        err = openai_error(await http.post("/openai/v1/chat/completions", json={**CHAT, "chat_template": template}))
        assert err["code"] == "template_error" and err["param"] == "chat_template" and says in err["message"], err
        assert (await http.post("/openai/v1/chat/completions", json=CHAT)).status_code == 200


async def test_slow_templates_do_not_hold_up_tokenization_or_the_models_template(bounded_templates):
    """Three renders that run until their time limit; meanwhile plain tokenization and a chat
    request with the model's own template are answered (they finish first: order, not speed)."""
    slow = {**CHAT, "chat_template": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"}
    finished: list[str] = []
    async with client_for(bounded_templates) as http:

        async def call(name: str, path: str, body: dict) -> httpx.Response:
            r = await http.post(path, json=body)
            finished.append(name)
            return r

        hostile = [asyncio.ensure_future(call("hostile", "/tokenize", slow)) for _ in range(3)]
        await asyncio.sleep(0.2)
        plain = await call("tokenize", "/tokenize", {"prompt": "hello world"})
        chat = await call("chat", "/tokenize", {"messages": MSG})
        results = await asyncio.gather(*hostile)
    assert plain.status_code == 200 and chat.status_code == 200
    assert all(r.status_code == 400 and r.json()["error"]["code"] == "template_error" for r in results)
    assert finished[:2] == ["tokenize", "chat"], finished


async def test_the_model_template_renders_as_transformers_does(tiny_engine, smollm_dir):
    from transformers import AutoTokenizer

    from engines.tokenizer import Tokenizer

    conversations = [
        MSG,
        [{"role": "system", "content": "Be brief."}, *MSG, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
        [{"role": "user", "content": "Ünïcödé ✓ \u200b"}, {"role": "assistant", "content": "ok", "tool_calls": None}],
    ]
    for hf in (tiny_engine.tokenizer.hf, AutoTokenizer.from_pretrained(smollm_dir)):
        ours = Tokenizer(hf)
        try:
            for messages in conversations:
                for add in (True, False):
                    assert ours.apply_chat_template(messages, add_generation_prompt=add) == hf.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=add)
            prefix = [*MSG, {"role": "assistant", "content": "The answer is"}]
            assert ours.apply_chat_template(prefix, add_generation_prompt=False, continue_final_message=True) == hf.apply_chat_template(
                prefix, tokenize=False, continue_final_message=True)
        finally:
            ours.close()


# -- D5: malformed input is a 400 before anything runs ---------------------------------------------


SURROGATES = [
    ("/openai/v1/chat/completions", b'{"messages":[{"role":"user","content":"\\ud800 x"}],"max_tokens":1}'),
    ("/openai/v1/completions", b'{"prompt":"\\ud83d","max_tokens":1}'),
    ("/openai/v1/chat/completions", b'{"model":"\\ud800","messages":[{"role":"user","content":"x"}]}'),
    ("/tokenize", b'{"prompt":"\\ud800"}'),
    ("/openai/v1/completions", b'{"prompt":"x","max_tokens":1,"stop":["\\udfff"]}'),
    ("/openai/v1/chat/completions", b'{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"\\ud800"}}],'
                                    b'"tool_choice":{"type":"function","function":{"name":"\\ud800"}}}'),
]


@pytest.mark.parametrize(("path", "raw"), SURROGATES)
async def test_lone_surrogates_are_invalid_json(tiny_engine, path, raw):
    async with client_for(make_app(tiny_engine)) as http:
        err = openai_error(await http.post(path, content=raw, headers={"content-type": "application/json"}))
        assert err["code"] == "invalid_json" and "surrogate" in err["message"]
        assert await generated_tokens(http) == 0
        assert (await http.post("/openai/v1/chat/completions", json=CHAT)).status_code == 200


async def test_lone_surrogates_in_embedding_input(minilm_engine):
    async with client_for(make_app(minilm_engine)) as http:
        r = await http.post("/openai/v1/embeddings", content=b'{"input":"\\ud800"}', headers={"content-type": "application/json"})
        assert openai_error(r)["code"] == "invalid_json"
        assert (await http.post("/openai/v1/embeddings", json={"input": "fine"})).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": "f"}]}, *MSG]},
         "messages[1].tool_calls[0].function"),
        ({**CHAT, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs.messages"),
    ],
)
async def test_malformed_chat_history_is_a_400(tiny_engine, body, param):
    async with client_for(make_app(tiny_engine)) as http:
        assert openai_error(await http.post("/openai/v1/chat/completions", json=body))["param"] == param
        assert await generated_tokens(http) == 0


V2 = {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["Once"]}], "parameters": {"max_tokens": 3}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/tiny:predict", {"instances": ["hi"], "parameters": [1]}),
        ("/v1/models/tiny:predict", {"instances": ["hi"], "parameters": [["max_tokens", 1]]}),
        ("/v1/models/tiny:predict", {"instances": ["hi"], "parameters": {"max_tokens": 1.9}}),
        ("/v1/models/tiny:predict", {"instances": ["hi"], "parameters": {"max_tokens": True}}),
        ("/v1/models/tiny:predict", {"instances": ["hi"], "parameters": {"top_p": -1, "temperature": 1}}),
        ("/v2/models/tiny/infer", {**V2, "parameters": [["max_tokens", 1]]}),
        ("/v2/models/tiny/infer", {**V2, "outputs": [1]}),
        ("/v2/models/tiny/infer", {**V2, "outputs": "x"}),
        ("/v2/models/tiny/infer", {**V2, "outputs": [{"name": "output-0", "parameters": [1]}]}),
    ],
)
async def test_malformed_kserve_bodies_are_400_before_generation(tiny_engine, path, body):
    async with client_for(make_app(tiny_engine)) as http:
        r = await http.post(path, json=body)
        assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
        assert await generated_tokens(http) == 0


async def test_kserve_numbers_may_be_numeric_strings(http):
    """Kept leniency (documented): KServe clients send parameters as strings, gRPC string_param too."""
    r = await http.post("/v1/models/tiny:predict", json={"instances": ["Once"], "parameters": {"max_tokens": "2", "temperature": "0"}})
    assert r.status_code == 200, r.text


# -- D7: unknown field names in a response header ------------------------------------------------


async def test_unknown_field_names_reach_the_header_only_when_safe_and_few(http):
    r = await http.post("/openai/v1/completions", json={"prompt": "x", "max_tokens": 1, "a\r\nSet-Cookie: x=1": 1, "€": 1, "plain_name": 2})
    assert r.status_code == 200
    assert r.headers["x-ignored-params"] == "plain_name,+2 more" and "set-cookie" not in r.headers
    many = {"prompt": "x", "max_tokens": 1, **{f"k{i:06d}": 1 for i in range(100_000)}}
    r = await http.post("/openai/v1/completions", json=many)
    assert r.status_code == 200 and len(r.headers["x-ignored-params"]) < 200
    assert r.headers["x-ignored-params"].endswith(",+99984 more")


async def test_unknown_non_latin1_field_with_a_stream(http):
    body = {"prompt": "x", "max_tokens": 2, "stream": True, "é€": 1}
    async with http.stream("POST", "/openai/v1/completions", json=body) as r:
        text = (await r.aread()).decode()
    assert r.status_code == 200 and r.headers["x-ignored-params"] == "+1 more" and text.endswith("data: [DONE]\n\n")


# -- D20: OpenAI's types, strictly ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"n": 1.0}, "n"),
        ({"temperature": "0.5"}, "temperature"),
        ({"logit_bias": {" 5 ": 1}}, "logit_bias"),
        ({"logit_bias": {"\u0665": 1}}, "logit_bias"),
        ({"seed": "7"}, "seed"),
    ],
)
async def test_openai_fields_are_typed_strictly(http, body, param):
    err = openai_error(await http.post("/openai/v1/completions", json={"prompt": "x", "max_tokens": 1, **body}))
    assert err["param"] == param, err


async def test_a_json_number_is_a_number(http):
    r = await http.post("/openai/v1/completions", json={"prompt": "x", "max_tokens": 1, "temperature": 0, "top_p": 1})
    assert r.status_code == 200 and json.loads(r.text)["choices"][0]["finish_reason"] in ("stop", "length")


# -- D8: constraints the grammar engine cannot follow ----------------------------------------------

RECURSIVE = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}}}


@pytest.mark.parametrize(
    "extra",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {**RECURSIVE, "$ref": "#/$defs/n"}}}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {**RECURSIVE, "$ref": "#/$defs/n"}}}],
         "tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"guided_regex": "((a{100}){100}){100}"},
        {"guided_grammar": "start: a\na: a1 a1\n" + "".join(f"a{i}: a{i + 1} a{i + 1}\n" for i in range(1, 60)) + 'a60: "x"'},
    ],
    ids=["recursive-schema", "recursive-tool", "nested-repeats", "doubling-lark"],
)
async def test_grammars_that_cannot_be_followed_are_400_up_front(tiny_engine, extra):
    async with client_for(make_app(tiny_engine)) as http:
        err = openai_error(await http.post("/openai/v1/chat/completions", json={**CHAT, **extra}))
        if "guided_grammar" in extra and "structured_outputs.grammar" in REFUSED:  # no Lark grammars at all
            assert err["param"] == "structured_outputs.grammar", err
        else:
            assert "cannot be enforced" in err["message"], err
        text = (await http.get("/metrics")).text
        assert metric_sample(text, "gateway_generation_tokens_total") == 0
        assert metric_sample(text, "gateway_request_errors_total", code="internal") == 0


@pytest.mark.skipif(TEST_ENGINE != "transformers", reason="our scheduler's handling of a grammar that fails mid-generation")
async def test_a_grammar_failing_mid_generation_ends_only_its_own_request(tiny_engine):
    """This grammar starts with a free choice (a number or an object) and only fails once the object
    is chosen; logit_bias makes the model choose it. The failing row ends with a 400-class error and
    the row beside it finishes."""
    brace = tiny_engine.tokenizer.encode("{", add_special_tokens=False)[0]
    failing = {**CHAT, "max_tokens": 8, "logit_bias": {str(brace): 100},
               "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                   **RECURSIVE, "anyOf": [{"type": "integer"}, {"$ref": "#/$defs/n"}]}}}}
    neighbour = {"model": "tiny", "prompt": "Once", "max_tokens": 24, "ignore_eos": True, "temperature": 0}
    async with client_for(make_app(tiny_engine)) as http:
        other = asyncio.ensure_future(http.post("/openai/v1/completions", json=neighbour))
        err = openai_error(await http.post("/openai/v1/chat/completions", json=failing))
        assert "could not be followed" in err["message"] and err["param"] == "response_format"
        stream = {**failing, "stream": True}
        async with http.stream("POST", "/openai/v1/chat/completions", json=stream) as r:
            events = sse_events((await r.aread()).decode())
        assert r.status_code == 200 and "could not be followed" in events[-1]["error"]["message"]
        done = await other
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 24
        text = (await http.get("/metrics")).text
        assert metric_sample(text, "gateway_request_errors_total", code="internal") == 0
        assert metric_sample(text, "gateway_request_errors_total", code="invalid_request") == 2


# -- D9: scoring a prompt costs what it returns ----------------------------------------------------


@pytest.mark.skipif(TEST_ENGINE != "transformers", reason="the transformers engine's scoring prefill (vLLM scores in its own chunks)")
async def test_prompt_scoring_works_in_chunks_and_matches_a_full_forward_pass(tiny_engine, tiny_dir):
    """A prompt of over two chunks is scored in chunks of SCORING_CHUNK positions (full-vocabulary logits
    never exist for more than one chunk at a time), with the same numbers as one plain forward."""
    import torch

    from engines.hf.scheduler import SCORING_CHUNK
    from tests.helpers import reference_logits

    scheduler = tiny_engine._scheduler
    widest: list[int] = []
    real_forward = scheduler._forward

    def spy(*args, **kwargs):  # the real forward pass; only the size of what it returns is noted
        logits = real_forward(*args, **kwargs)
        widest.append(logits.shape[0] * logits.shape[1])
        return logits

    text = " ".join(f"word{i}" for i in range(300))
    ids = tiny_engine.tokenizer.encode(text)
    assert len(ids) > 2 * SCORING_CHUNK
    scheduler._forward = spy
    try:
        async with client_for(make_app(tiny_engine)) as http:
            r = await http.post("/openai/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 3})
    finally:
        scheduler._forward = real_forward
    assert r.status_code == 200, r.text
    assert max(widest) <= SCORING_CHUNK
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) and lp["token_logprobs"][0] is None
    (ref_ids, logits), = reference_logits(tiny_dir, "LlamaForCausalLM", [text])
    assert ref_ids == ids
    expected = torch.log_softmax(logits.float(), dim=-1)
    for pos in (1, SCORING_CHUNK, SCORING_CHUNK + 1, len(ids) - 1):
        assert lp["token_logprobs"][pos] == pytest.approx(float(expected[pos - 1, ids[pos]]), abs=1e-3)
        best = torch.topk(expected[pos - 1], 3)
        # the dict holds the 3 best (and the prompt's own token when it is not among them)
        assert sorted(lp["top_logprobs"][pos].values(), reverse=True)[:3] == pytest.approx(best.values.tolist(), abs=1e-3)


@pytest.mark.skipif("prompt_logprobs" in REFUSED, reason="this engine scores no prompts (test_openai_sampling checks its 400)")
async def test_scored_prompt_tokens_are_bounded_per_request(tiny_engine):
    prompt = list(range(100, 160))  # 60 token ids
    body = {"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 2}
    async with client_for(make_app(tiny_engine, max_scored_prompt_tokens=100)) as http:
        assert (await http.post("/openai/v1/completions", json=body)).status_code == 200
        err = openai_error(await http.post("/openai/v1/completions", json={**body, "n": 2}))
        assert err["param"] == "logprobs" and "120 tokens" in err["message"]
        err = openai_error(await http.post("/openai/v1/completions", json={**body, "prompt": [prompt, prompt]}))
        assert err["param"] == "logprobs"
        assert (await http.post("/openai/v1/completions", json={**body, "echo": False, "n": 2})).status_code == 200  # nothing scored


# -- D18: a deadline that has passed costs no prefill ----------------------------------------------


async def test_a_passed_deadline_is_answered_before_any_model_work(tiny_engine):
    before = tiny_engine.stats().steps_total
    async with client_for(make_app(tiny_engine)) as http:
        r = await http.post("/openai/v1/chat/completions", json=CHAT, headers={"x-request-timeout": "0.000001"})
        assert openai_error(r, 504)["message"] == "The request deadline was exceeded."
        assert await generated_tokens(http) == 0
    assert tiny_engine.stats().steps_total == before


@pytest.mark.skipif(TEST_ENGINE != "transformers", reason="the transformers scheduler's admission")
async def test_a_request_whose_deadline_passes_in_the_queue_is_never_prefilled(tiny_dir):
    import time

    from engines import GenerationParams, RequestContext
    from engines.errors import EngineError
    from engines.hf import load_engine
    from engines.loader import ModelSpec

    engine = load_engine(ModelSpec(model_dir=str(tiny_dir)), served_name="tiny", max_num_seqs=1)
    await engine.start()
    prefilled: list[int] = []
    real_prefill = engine._scheduler._prefill
    engine._scheduler._prefill = lambda seqs: (prefilled.extend(len(s.prompt_ids) for s in seqs), real_prefill(seqs))[1]
    try:
        holder = engine.generate([1, 2, 3], GenerationParams(max_tokens=4000, ignore_eos=True), RequestContext("holder"))
        await anext(holder)  # the only slot is taken
        deadline = time.monotonic() + 0.2
        waiter = engine.generate([4, 5, 6, 7, 8], GenerationParams(max_tokens=2), RequestContext("waiter", deadline=deadline))
        pending = asyncio.ensure_future(anext(waiter))
        while time.monotonic() <= deadline:
            await asyncio.sleep(0.05)
        await holder.aclose()  # frees the slot after the waiter's deadline
        with pytest.raises(EngineError, match="deadline"):
            await pending
        assert prefilled == [3]  # the holder only
    finally:
        await engine.stop()
