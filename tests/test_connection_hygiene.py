"""Slow and oversized clients, forged log fields, malformed protobuf, reflection and paths
(adversary.md D13-D17), over real sockets where the protocol is the point."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import grpc
import httpx
import pytest

from gateway.http_protocol import ConnectionLimits, guarded_protocol
from tests.conftest import free_port, make_app
from tests.helpers import grpc_channel

LIMITS = ConnectionLimits(header_timeout=1.0, body_timeout=1.0, max_header_bytes=8 << 10)


class GuardedServer:
    """uvicorn on loopback in a thread, with the server's own HTTP protocol and these limits."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", http=guarded_protocol(LIMITS))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> GuardedServer:
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(60)  # a hang guard only: the server answers after its own limit
        return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture(scope="module")
def guarded(tiny_app):
    with GuardedServer(tiny_app) as server:
        yield server


def test_headers_sent_a_byte_at_a_time_are_cut_off(guarded):
    with guarded.connect() as sock:
        sock.sendall(b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        for _ in range(30):  # a byte every 0.1 s: the headers never end
            try:
                sock.sendall(b"a")
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > 1.5:
                break
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with guarded.connect() as sock:
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_a_body_that_never_arrives_is_cut_off_and_the_request_ends(guarded, tiny_engine):
    with guarded.connect() as sock:
        sock.sendall(b"POST /openai/v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"prompt\": \"Once")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert tiny_engine.stats().running == 0
    assert httpx.get(f"http://127.0.0.1:{guarded.port}/health", timeout=60).status_code == 200


@pytest.mark.parametrize("headers", [b"X-Big: " + b"a" * (1 << 20) + b"\r\n", b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))])
def test_oversized_headers_are_431(guarded, headers):
    with guarded.connect() as sock:
        try:
            sock.sendall(b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        except OSError:  # the server may close while we are still sending
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_kept_alive_connections_serve_request_after_request(guarded):
    with httpx.Client(base_url=f"http://127.0.0.1:{guarded.port}", timeout=60) as http:
        first = http.get("/openai/v1/models")
        time.sleep(LIMITS.header_timeout * 1.5)  # idle between requests is the keep-alive timer's business
        second = http.get("/openai/v1/models")
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 2}
        third = http.post("/openai/v1/completions", json=body)
    assert first.status_code == second.status_code == third.status_code == 200


# -- D14: the access log cannot be forged ---------------------------------------------------------


async def test_client_fields_cannot_forge_access_log_fields(tiny_engine, caplog):
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = make_app(tiny_engine)
    forged = "x route=GET /v2/repository/models/m/unload status=200 prompt_tokens=0"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.get("/openai/v1/models", headers={"x-request-id": forged})
        kept = await http.get("/openai/v1/models", headers={"x-request-id": "trace-7f3a.1"})
        odd = await http.get("/openai/v1/models%20status=200%20model=evil")
    assert r.headers["x-request-id"] != forged and len(r.headers["x-request-id"]) == 32  # ours instead
    assert kept.headers["x-request-id"] == "trace-7f3a.1"
    assert odd.status_code == 404
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "gateway.access"]
    pairs = [logfmt(line) for line in lines]
    assert all([k for k, _ in p] == ["request_id", "route", "model", "status", "prompt_tokens", "completion_tokens", "ttft_ms", "total_ms"]
               for p in pairs), lines
    fields = [dict(p) for p in pairs]
    assert [f["status"] for f in fields] == ["200", "200", "404"]
    assert fields[2]["route"] == "GET /openai/v1/models status=200 model=evil" and fields[2]["model"] == "tiny"


def logfmt(line: str) -> list[tuple[str, str]]:
    """key=value pairs, values bare or JSON-quoted; the whole line must be made of them."""
    import re

    pair = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)')
    out, at = [], 0
    while at < len(line):
        m = pair.match(line, at)
        assert m, f"not logfmt at {at}: {line}"
        out.append((m.group(1), json.loads(m.group(2)) if m.group(2).startswith('"') else m.group(2)))
        at = m.end()
    return out


# -- D15, D16: gRPC ---------------------------------------------------------------------------------


async def grpc_call(app, method: str, payload: bytes, metadata=()):
    async with grpc_channel(app) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return await call(payload, metadata=metadata, timeout=60)


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff\x0f\x01", b"\x0a\x05ab"])
@pytest.mark.parametrize("keys", [(), ("k",)])
async def test_malformed_protobuf_is_invalid_argument(tiny_engine, payload, keys):
    app = make_app(tiny_engine, api_key=keys)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_call(app, "/inference.GRPCInferenceService/ModelInfer", payload, metadata=(("x-api-key", "k"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf" in err.value.details()


async def test_reflection_needs_the_key_unless_opened(tiny_engine):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def list_services(app, metadata=()):
        async with grpc_channel(app) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata)
            return [s.name async for r in call for s in r.list_services_response.service]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_services(make_app(tiny_engine, api_key=("k",)))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "inference.GRPCInferenceService" in await list_services(make_app(tiny_engine, api_key=("k",)), metadata=(("x-api-key", "k"),))
    assert "inference.GRPCInferenceService" in await list_services(make_app(tiny_engine, api_key=("k",), open_grpc_reflection=True))
    assert "inference.GRPCInferenceService" in await list_services(make_app(tiny_engine))  # no keys: all open


# -- D17: no server paths in responses --------------------------------------------------------------


async def test_models_show_no_server_path(http, tiny_dir):
    card = (await http.get("/openai/v1/models")).json()["data"][0]
    assert card["root"] == tiny_dir.name and "/" not in card["root"]
    assert str(tiny_dir) not in json.dumps((await http.get("/v2/models/tiny")).json())
