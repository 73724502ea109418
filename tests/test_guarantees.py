"""What every face promises, as one table over OpenAI, KServe v1, v2 REST and v2 gRPC.

Each guarantee lives once, in the engine frontend or the server's request path; these tests hold
every face to it (regressions for adversary.md D2, D3, D4, D6, D10, D19), on the engine under test
(transformers, or vLLM in the vLLM leg). Capacity is filled by holding a real admission, so no
test depends on how fast the machine generates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc
import httpx
import pytest

from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from engines import GenerationParams
from engines.frontend import RequestLimits
from tests.conftest import ThreadedServer, make_app
from tests.helpers import HeldEngine, eventually, grpc_channel, metric_sample

FACES = ["openai", "v1", "v2", "grpc"]
WORDS = ["Once upon a time", "The sea", "A red fox", "Rain", "Stars at night", "Bread"]


@dataclass
class Outcome:
    kind: str  # ok, invalid, overloaded, deadline, unavailable, internal, other
    message: str
    status: object
    headers: dict[str, str]


_HTTP_KINDS = {200: "ok", 400: "invalid", 429: "overloaded", 503: "unavailable", 504: "deadline", 500: "internal"}
_GRPC_KINDS = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid", grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline", grpc.StatusCode.UNAVAILABLE: "unavailable", grpc.StatusCode.INTERNAL: "internal",
}


def http_body(face: str, texts: list[str], max_tokens: int) -> tuple[str, dict]:
    if face == "openai":
        return "/openai/v1/completions", {"prompt": texts, "max_tokens": max_tokens, "temperature": 0}
    if face == "v1":
        return "/v1/models/tiny:predict", {"instances": texts, "parameters": {"max_tokens": max_tokens}}
    return "/v2/models/tiny/infer", {
        "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
        "parameters": {"max_tokens": max_tokens},
    }


def grpc_request(texts: list[str], max_tokens: int) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="tiny")
    req.inputs.add(name="input-0", datatype="BYTES", shape=[len(texts)]).contents.bytes_contents.extend(t.encode() for t in texts)
    req.parameters["max_tokens"].int64_param = max_tokens
    return req


async def send(app, face: str, texts: list[str], max_tokens: int = 2, *, base_url: str | None = None,
               headers: dict[str, str] | None = None) -> Outcome:
    """One generation request of len(texts) parts on one face, its answer normalised."""
    if face == "grpc":
        async with grpc_channel(app) as channel:
            try:
                # No gRPC deadline of the client's, so the server's --request_timeout applies; the
                # wait_for is only a guard against a hang.
                call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(texts, max_tokens))
                await asyncio.wait_for(call, 300)
            except grpc.aio.AioRpcError as err:
                return Outcome(_GRPC_KINDS.get(err.code(), "other"), err.details() or "", err.code(), {})
            return Outcome("ok", "", grpc.StatusCode.OK, {})
    path, body = http_body(face, texts, max_tokens)
    transport = None if base_url else httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=base_url or "http://t", timeout=300) as http:
        r = await http.post(path, json=body, headers=headers)
    error = r.json().get("error") if r.status_code != 200 else None
    message = error if isinstance(error, str) else (error or {}).get("message", "")
    if face == "openai" and error is not None:
        assert set(error) == {"message", "type", "param", "code"}  # the OpenAI envelope
    elif error is not None:
        assert set(r.json()) == {"error"}  # KServe's envelope
    return Outcome(_HTTP_KINDS.get(r.status_code, "other"), message, r.status_code, dict(r.headers))


async def metrics_of(app) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        return (await http.get("/metrics")).text


async def metrics_once_counted(app, name: str, limit: float = 300.0, **labels: str) -> str:
    """The metrics once `name` has a sample (or the hang guard passed: the caller's assertion then
    says what is missing). A gRPC call is counted when its handler finishes, which can be after the
    client has its status."""
    deadline = time.monotonic() + limit
    while True:
        text = await metrics_of(app)
        if metric_sample(text, name, **labels) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def all_but(engine, free: int):
    """Hold every generation slot of the engine but `free`, through a real admission."""
    slots = engine.max_in_flight
    held = await engine.admit([[1]], GenerationParams(max_tokens=1), slots - free, limits=RequestLimits(max_request_parts=slots))
    try:
        yield
    finally:
        held.close()


# -- admission: whole or nothing (D2, D10) ------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
async def test_a_request_that_does_not_fit_whole_is_refused_and_nothing_of_it_runs(tiny_engine, face):
    app = make_app(tiny_engine, disable_log_requests=True)
    before = tiny_engine.stats()
    async with all_but(tiny_engine, free=1):
        got = await send(app, face, WORDS[:3])
        stats = tiny_engine.stats()
        assert got.kind == "overloaded", got
        assert "capacity" in got.message and "needs 3" in got.message
        if face != "grpc":
            assert got.headers["retry-after"] == "1"
        # Not one part was handed to the engine: nothing runs, queues or generates for nobody.
        assert (stats.running, stats.waiting) == (0, 0)
        assert stats.in_flight == tiny_engine.max_in_flight - 1
        assert stats.completed_total == before.completed_total and stats.aborted_total == before.aborted_total
        text = await metrics_once_counted(app, "gateway_request_errors_total", code="overloaded")
        assert metric_sample(text, "gateway_generation_tokens_total") == 0
        assert metric_sample(text, "gateway_request_errors_total", code="overloaded") == 1  # one request, not 3 parts
        assert metric_sample(text, "gateway_requests_aborted_total") == 0
    assert (await send(app, face, WORDS[:3])).kind == "ok"  # the same request fits once there is room
    assert tiny_engine.stats().in_flight == 0


@pytest.mark.parametrize("face", FACES)
async def test_parts_per_request_are_capped_on_every_face(tiny_engine, face):
    app = make_app(tiny_engine, max_request_parts=3, disable_log_requests=True)
    got = await send(app, face, WORDS[:4])
    assert got.kind == "invalid" and "4 parts" in got.message and "at most 3" in got.message
    assert (await send(app, face, WORDS[:3])).kind == "ok"


async def test_one_openai_request_cannot_take_the_whole_queue(tiny_engine):
    """D10: 5000 prompts (or prompts x best_of) are one request's worth of parts, checked before
    anything is admitted."""
    app = make_app(tiny_engine, disable_log_requests=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post("/openai/v1/completions", json={"prompt": ["hi"] * 5000, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and "5000 parts" in r.json()["error"]["message"]
        r = await http.post("/openai/v1/completions", json={"prompt": ["hi"] * 17, "best_of": 16, "max_tokens": 1})
        assert r.status_code == 400 and "272 parts" in r.json()["error"]["message"]
        r = await http.post("/openai/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "n": 16, "max_tokens": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == 16
    text = await metrics_of(app)
    assert metric_sample(text, "gateway_request_errors_total") == 2  # once per request, whatever its parts
    assert metric_sample(text, "gateway_request_errors_total", code="invalid_request") == 2
    assert tiny_engine.stats().in_flight == 0


# -- operator limits on every face (D4) ----------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
async def test_operator_limits_apply_on_every_face(tiny_engine, face):
    app = make_app(tiny_engine, max_total_tokens=8, max_prompt_tokens=16, disable_log_requests=True)
    over_total = await send(app, face, ["hi"], max_tokens=12)
    assert over_total.kind == "invalid" and "allows 8 per request" in over_total.message
    over_prompt = await send(app, face, [" ".join(["word"] * 40)], max_tokens=1)
    assert over_prompt.kind == "invalid" and "at most 16" in over_prompt.message
    assert (await send(app, face, ["hi", "there"], max_tokens=4)).kind == "ok"  # 2 x 4 = 8 fits


# -- deadlines: 504 / DEADLINE_EXCEEDED, before any work --------------------------------------------


@pytest.mark.parametrize("face", FACES)
async def test_a_passed_deadline_is_deadline_exceeded_on_every_face(tiny_engine, face):
    app = make_app(tiny_engine, request_timeout=1e-6, disable_log_requests=True)
    got = await send(app, face, WORDS[:2])
    assert got.kind == "deadline" and "deadline" in got.message
    text = await metrics_once_counted(app, "gateway_request_errors_total", code="deadline_exceeded")
    assert metric_sample(text, "gateway_request_errors_total", code="deadline_exceeded") == 1
    assert metric_sample(text, "gateway_generation_tokens_total") == 0
    assert tiny_engine.stats().in_flight == 0


# -- a client that leaves stops its generations (D3), and is accounted honestly (D19) ----------------


@pytest.mark.parametrize("face", FACES)
async def test_a_client_that_leaves_aborts_every_part_and_is_logged_as_gone(tiny_engine, face, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    held = HeldEngine(tiny_engine)
    app = make_app(held)
    before = tiny_engine.stats().aborted_total
    with ThreadedServer(app) as server:
        # Long enough that neither part can end before the client leaves, even when vLLM runs ahead.
        request = asyncio.ensure_future(send(app, face, WORDS[:2], max_tokens=1000, base_url=server.base_url))
        await eventually(lambda: held.holding == 2, "both parts to produce a token")
        request.cancel()  # the client goes away: the connection closes, or the gRPC call is cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await request
        assert held.held_finished == 0, "a part ended before the client left: nothing left to test"
        await eventually(lambda: tiny_engine.stats().aborted_total == before + 2, "both parts to be aborted")
        await eventually(lambda: any("outcome=aborted" in r.getMessage() for r in caplog.records if r.name == "gateway.access"),
                         "the access line")
        held.release()
        assert tiny_engine.stats().in_flight == 0
        line = next(r.getMessage() for r in caplog.records if r.name == "gateway.access" and "outcome=aborted" in r.getMessage())
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        assert fields["status"] == ("CANCELLED" if face == "grpc" else "499")
        assert int(fields["completion_tokens"]) >= 2 and int(fields["prompt_tokens"]) > 0  # what the parts really cost
        text = await metrics_of(app)
        assert metric_sample(text, "gateway_requests_aborted_total") == 1  # one request
        assert metric_sample(text, "gateway_generations_aborted_total") == 2  # of two parts
        assert metric_sample(text, "gateway_generation_tokens_total") >= 2  # their tokens are counted


# -- unexpected errors: the request id, the envelope and the real status (D6) ------------------------


class Faulty:
    """The real engine, with a bug: generation raises an exception that is no EngineError."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompt, params, ctx):
        raise RuntimeError("a bug")
        yield  # pragma: no cover


@pytest.mark.parametrize("face", ["openai", "v1", "v2"])
async def test_an_unexpected_error_is_a_500_with_the_request_id(tiny_engine, face, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = make_app(Faulty(tiny_engine))
    path, body = http_body(face, ["hi"], 2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post(path, json=body, headers={"x-request-id": "trace-500"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "trace-500"
    error = r.json()["error"]
    assert (error["type"] == "server_error") if face == "openai" else isinstance(error, str)
    assert "a bug" not in r.text  # no internals in the body
    line = next(rec.getMessage() for rec in caplog.records if rec.name == "gateway.access" and "trace-500" in rec.getMessage())
    assert "status=500" in line
    assert metric_sample(await metrics_of(app), "gateway_requests_total", status="500") == 1
    assert tiny_engine.stats().in_flight == 0
