"""What operators rely on: metrics, API keys, limits, deadlines, CORS, access logs, a dying
engine thread, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import grpc
import httpx
import openai
import pytest

from compat.kserve.dataplane import DataPlane
from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from compat.kserve.grpc.servicer import build_server
from gateway.auth import ApiKeys
from gateway.grpc_interceptors import AccessInterceptor, ApiKeyInterceptor
from gateway.observability import Metrics
from tests.conftest import TEST_ENGINE, make_app
from tests.helpers import eventually, serving_grpc
from tests.helpers import metric_sample as sample

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


# -- metrics --------------------------------------------------------------------------------------


async def test_metrics_count_tokens_latencies_and_requests(tiny_engine):
    app = make_app(tiny_engine)
    async with client_for(app) as http:
        r1 = (await http.post("/openai/v1/chat/completions", json=CHAT)).json()
        async with http.stream("POST", "/openai/v1/completions", json={"model": "tiny", "prompt": "Once", "max_tokens": 5,
                                                                         "stream": True, "stream_options": {"include_usage": True}}) as s:
            lines = [line async for line in s.aiter_lines() if line.startswith("data: {")]
        r2 = json.loads(lines[-1][6:])["usage"]
        v2 = await http.post("/v2/models/tiny/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Once"]}],
                                                          "parameters": {"max_tokens": 3, "temperature": 0}})
        assert v2.status_code == 200
        bad = await http.post("/openai/v1/chat/completions", json={**CHAT, "logit_bias": {"99999999": 1}})
        assert bad.status_code == 400
        text = (await http.get("/metrics")).text
    m = {"model_name": "tiny"}
    assert sample(text, "gateway_prompt_tokens_total", **m) >= r1["usage"]["prompt_tokens"] + r2["prompt_tokens"] + 1
    assert sample(text, "gateway_generation_tokens_total", **m) == r1["usage"]["completion_tokens"] + r2["completion_tokens"] + 3
    assert sample(text, "gateway_time_to_first_token_seconds_count", **m) == 3
    assert sample(text, "gateway_inter_token_latency_seconds_count", **m) > 0
    assert sample(text, "gateway_time_per_output_token_seconds_count", **m) >= 2
    for stage in ("preprocess", "predict", "postprocess"):
        assert sample(text, f"request_{stage}_seconds_count", **m) >= 3, stage
    assert sample(text, "gateway_requests_total", face="openai", status="200") == 2
    assert sample(text, "gateway_requests_total", face="openai", status="400") == 1
    assert sample(text, "gateway_requests_total", face="v2", status="200") == 1
    assert sample(text, "gateway_requests_running", **m) == 0 and "gateway_requests_waiting" in text
    if TEST_ENGINE == "transformers":
        assert "gateway_kv_cache_capacity_tokens" in text and "gateway_batch_size" in text


async def test_an_abandoned_stream_counts_as_aborted(tiny_engine):
    from tests.conftest import ThreadedServer

    body = {"model": "tiny", "prompt": "Once", "max_tokens": 500, "stream": True, "ignore_eos": True}
    with ThreadedServer(make_app(tiny_engine)) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as http:
            async with http.stream("POST", "/openai/v1/completions", json=body) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data: {"):
                        break  # and hang up
            aborted = []

            async def scrape() -> None:
                aborted.append(sample((await http.get("/metrics")).text, "gateway_requests_aborted_total", model_name="tiny"))

            while True:
                await scrape()
                if aborted[-1] >= 1 or len(aborted) > 6000:  # no time limit but a hang guard
                    break
                await asyncio.sleep(0.05)
    assert aborted[-1] == 1


# -- API keys -------------------------------------------------------------------------------------


async def test_api_keys_on_every_http_face(tiny_engine, caplog):
    caplog.set_level(logging.DEBUG)
    app = make_app(tiny_engine, api_key=("first-secret", "second-secret"))
    async with client_for(app) as http:
        r = await http.post("/openai/v1/chat/completions", json=CHAT)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        r = await http.post("/openai/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        sdk = openai.AsyncOpenAI(base_url="http://test/openai/v1", api_key="second-secret", http_client=http, max_retries=0)
        assert (await sdk.chat.completions.create(**CHAT)).choices[0].finish_reason in ("stop", "length")
        body = {"instances": ["Once"]}
        r = await http.post("/v1/models/tiny:predict", json=body)
        assert r.status_code == 401 and set(r.json()) == {"error"}
        assert (await http.post("/v1/models/tiny:predict", json=body, headers={"x-api-key": "first-secret"})).status_code == 200
        for open_path in ("/", "/health", "/ready", "/metrics", "/v2/health/ready"):
            assert (await http.get(open_path)).status_code == 200, open_path
    assert "first-secret" not in caplog.text and "second-secret" not in caplog.text


async def test_health_and_metrics_can_be_protected_too(tiny_engine):
    app = make_app(tiny_engine, api_key=("k",), auth_health_and_metrics=True)
    async with client_for(app) as http:
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"authorization": "bearer k"})).status_code == 200


def test_keys_compare_whole_values_and_read_files(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# keys\nfrom-file\n\n")
    keys = ApiKeys.from_settings(["a"], str(path))
    assert keys.check(b"from-file") and keys.check(b"a")
    assert not keys.check(b"from-fil") and not keys.check(b"") and not keys.check(None)
    assert "from-file" not in repr(keys)


@contextlib.asynccontextmanager
async def grpc_channel(engine, interceptors):
    """A real gRPC server on loopback with these interceptors, and a channel to it."""
    async with serving_grpc(build_server(DataPlane(engine, "tiny"), interceptors=interceptors)) as channel:
        yield channel


async def test_api_keys_on_grpc(tiny_engine):
    async with grpc_channel(tiny_engine, [ApiKeyInterceptor(ApiKeys(["g-key"]))]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ServerLive(pb.ServerLiveRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        live = await stub.ServerLive(pb.ServerLiveRequest(), metadata=(("authorization", "Bearer g-key"),))
        assert live.live
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)


async def test_grpc_requests_get_records_metrics_and_log_lines(tiny_engine, caplog):
    caplog.set_level(logging.INFO)
    from gateway.observability import ObservedEngine

    metrics = Metrics("tiny")
    async with grpc_channel(ObservedEngine(tiny_engine, metrics), [AccessInterceptor(metrics, log_format="json")]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="tiny")
        req.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"Once")
        req.parameters["max_tokens"].int64_param = 3
        await stub.ModelInfer(req, metadata=(("x-request-id", "grpc-7"),))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="other"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(x["route"], x["status"]) for x in lines] == [("grpc /inference.GRPCInferenceService/ModelInfer", "OK"),
                                                        ("grpc /inference.GRPCInferenceService/ModelInfer", err.value.code().name)]
    assert err.value.code() != grpc.StatusCode.OK
    assert lines[0]["request_id"] == "grpc-7" and lines[0]["completion_tokens"] == 3 and lines[0]["ttft_ms"] > 0
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert sample(text, "gateway_requests_total", face="grpc", status="OK") == 1
    assert sample(text, "request_preprocess_seconds_count", model_name="tiny") == 1


# -- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "body", "status", "param"),
    [
        ({"max_prompt_tokens": 24}, {**CHAT, "messages": [{"role": "user", "content": "a b c d e f g h " * 6}]}, 400, "messages"),
        ({"max_stop_length": 5}, {**CHAT, "stop": ["x" * 6]}, 400, "stop"),
        ({"max_total_tokens": 20}, {**CHAT, "n": 3, "max_tokens": 8}, 400, "max_tokens"),
    ],
)
async def test_request_limits_are_400s_naming_the_parameter(tiny_engine, settings, body, status, param):
    async with client_for(make_app(tiny_engine, **settings)) as http:
        r = await http.post("/openai/v1/chat/completions", json=body)
        assert r.status_code == status and r.json()["error"]["param"] == param
        ok = await http.post("/openai/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        assert ok.status_code == 200


async def test_oversized_bodies_are_413_in_each_envelope(tiny_engine):
    async with client_for(make_app(tiny_engine, max_request_body_bytes=2000)) as http:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await http.post("/openai/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = await http.post("/v1/models/tiny:predict", json={"instances": ["x" * 5000]})
        assert r.status_code == 413 and "error" in r.json()

        async def chunks():  # no content-length: counted while it arrives
            for _ in range(10):
                yield b" " * 500

        r = await http.post("/openai/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert (await http.post("/openai/v1/chat/completions", json=CHAT)).status_code == 200


async def test_a_deadline_aborts_generation(tiny_engine):
    async with client_for(make_app(tiny_engine)) as http:
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}
        r = await http.post("/openai/v1/completions", json=body, headers={"x-request-timeout": "0.3"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded" and "deadline" in r.json()["error"]["message"]
        r = await http.post("/openai/v1/completions", json=body, headers={"x-request-timeout": "soon"})
        assert r.status_code == 400
        await eventually(lambda: tiny_engine.stats().running == 0, "the engine to be idle")


async def test_cors_preflight_and_headers(tiny_engine):
    async with client_for(make_app(tiny_engine, cors_allowed_origins=("http://ui.example",), api_key=("k",))) as http:
        pre = await http.options("/openai/v1/chat/completions", headers={
            "Origin": "http://ui.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
        r = await http.post("/openai/v1/chat/completions", json=CHAT, headers={"Origin": "http://ui.example", "Authorization": "Bearer k"})
        assert r.headers["access-control-allow-origin"] == "http://ui.example"
    async with client_for(make_app(tiny_engine)) as http:
        r = await http.post("/openai/v1/chat/completions", json=CHAT, headers={"Origin": "http://ui.example"})
        assert "access-control-allow-origin" not in r.headers


# -- logs -----------------------------------------------------------------------------------------


async def test_one_access_line_per_request_and_no_prompts_by_default(tiny_engine, caplog):
    caplog.set_level(logging.INFO)
    async with client_for(make_app(tiny_engine, log_format="json")) as http:
        secret_prompt = "my private question about zebras"
        r = await http.post("/openai/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": secret_prompt}]},
                            headers={"x-request-id": "req-42"})
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "gateway.access"]
    assert len(lines) == 1
    line = lines[0]
    usage = r.json()["usage"]
    assert (line["request_id"], line["status"], line["route"]) == ("req-42", 200, "POST /openai/v1/chat/completions")
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert line["ttft_ms"] > 0 and line["total_ms"] >= line["ttft_ms"]
    assert secret_prompt not in caplog.text


async def test_prompts_are_logged_only_when_asked_and_truncated(tiny_engine, caplog):
    caplog.set_level(logging.INFO)
    async with client_for(make_app(tiny_engine, log_prompts=True, max_log_len=12)) as http:
        await http.post("/openai/v1/completions", json={"model": "tiny", "prompt": "abcdefghijklmnopqrstuvwxyz", "max_tokens": 2})
    assert "abcdefghijkl" in caplog.text and "abcdefghijklm" not in caplog.text
    assert any(rec.name == "gateway.access" and "status=200" in rec.getMessage() for rec in caplog.records)


# -- engine failure and shutdown ------------------------------------------------------------------


@pytest.mark.skipif(TEST_ENGINE != "transformers", reason="kills the transformers engine's scheduler thread")
async def test_a_dead_generation_thread_fails_requests_and_readiness(tiny_dir):
    from engines.hf import load_engine
    from engines.loader import ModelSpec

    engine = load_engine(ModelSpec(model_dir=str(tiny_dir)), served_name="tiny")
    await engine.start()

    class Fatal(BaseException):
        pass

    def die() -> None:
        raise Fatal

    engine._scheduler._step = die  # the thread's next step kills it
    app = make_app(engine)
    try:
        async with client_for(app) as http:
            r = await asyncio.wait_for(http.post("/openai/v1/chat/completions", json=CHAT), 300)  # a hang guard
            assert r.status_code == 503
            for _ in range(100):
                if not engine._scheduler.alive:
                    break
                await asyncio.sleep(0.05)
            assert (await http.get("/ready")).status_code == 503 and (await http.get("/health")).status_code == 503
            again = await asyncio.wait_for(http.post("/openai/v1/chat/completions", json=CHAT), 300)
            assert again.status_code == 503
    finally:
        await engine.stop()
