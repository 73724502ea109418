"""Start-up and shutdown (adversary.md D11, D12, D22): the drain answers everything it stops, in
each face's own way; a start-up mistake is one line, before any model loads.

The drain is driven in-process over a wrapper of the real engine that holds a generation after its
first token until the test releases it, so "a request outlives the grace period" does not depend
on how fast tokens come. The SIGTERM tests run the real process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import free_port, make_app, spawn, stop_group
from tests.helpers import HeldEngine, sse_events

ROOT = Path(__file__).resolve().parents[1]
STREAM = {"model": "tiny", "prompt": "Once", "max_tokens": 64, "ignore_eos": True, "stream": True, "temperature": 0}


async def until(condition, what: str, limit: float = 120.0) -> None:
    """Wait for a condition (the limit only guards against a hang)."""
    for _ in range(int(limit / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def test_the_drain_answers_what_it_stops_on_every_face(tiny_engine):
    held = HeldEngine(tiny_engine)
    app = make_app(held)
    lifecycle = app.state.lifecycle
    from gateway.server import build_grpc_server

    grpc_server = build_grpc_server(app)
    port = free_port()
    grpc_server.add_insecure_port(f"127.0.0.1:{port}")
    await grpc_server.start()
    ended_before = tiny_engine.stats().aborted_total + tiny_engine.stats().completed_total
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=120) as http, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            infer = pb.ModelInferRequest(model_name="tiny")
            infer.inputs.add(name="input-0", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"Once")
            infer.parameters["max_tokens"].int64_param = 64
            calls = {
                "stream": asyncio.ensure_future(http.post("/openai/v1/completions", json=STREAM)),
                "openai": asyncio.ensure_future(http.post("/openai/v1/completions", json={**STREAM, "stream": False})),
                "v1": asyncio.ensure_future(http.post("/v1/models/tiny:predict", json={"instances": ["Once"], "parameters": {"max_tokens": 64}})),
                "grpc": asyncio.ensure_future(stub.ModelInfer(infer)),
            }
            await until(lambda: held.holding == 4, "four generations to start")
            assert lifecycle.in_flight == 4

            drain = asyncio.ensure_future(lifecycle.drain(0.5))
            await until(lambda: lifecycle.draining, "the drain to begin")
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["draining"] is True
            assert (await http.get("/health")).status_code == 200
            refused = await http.post("/openai/v1/completions", json={**STREAM, "stream": False})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
            assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
            kserve = await http.post("/v2/models/tiny/infer", json={"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})
            assert kserve.status_code == 503 and set(kserve.json()) == {"error"}
            with pytest.raises(grpc.aio.AioRpcError) as new_call:
                await stub.ModelInfer(infer)
            assert new_call.value.code() == grpc.StatusCode.UNAVAILABLE

            await drain  # the grace period passes with all four still held: they are stopped
            stream = calls["stream"].result()
            events = sse_events(stream.text)
            assert stream.status_code == 200 and events[-1]["error"]["code"] == "service_unavailable"
            assert "shutting down" in events[-1]["error"]["message"]
            openai = calls["openai"].result()
            assert openai.status_code == 503 and openai.json()["error"]["type"] == "server_error"
            v1 = calls["v1"].result()
            assert v1.status_code == 503 and "shutting down" in v1.json()["error"]
            with pytest.raises(grpc.aio.AioRpcError) as stopped:
                await calls["grpc"]
            assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
            assert lifecycle.in_flight == 0
            # Nothing is left running: each generation was aborted, or had already finished unread.
            await until(lambda: tiny_engine.stats().running == 0, "the engine to be idle")
            stats = tiny_engine.stats()
            assert stats.aborted_total + stats.completed_total == ended_before + 4
    finally:
        held.release()
        await grpc_server.stop(0)


async def test_requests_that_finish_in_the_grace_period_are_untouched(tiny_engine):
    held = HeldEngine(tiny_engine)
    app = make_app(held)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=120) as http:
        call = asyncio.ensure_future(http.post("/openai/v1/completions", json=STREAM))
        await until(lambda: held.holding == 1, "the generation to start")
        drain = asyncio.ensure_future(app.state.lifecycle.drain(600))
        await until(lambda: app.state.lifecycle.draining, "the drain to begin")
        held.release()
        await drain  # returns as soon as nothing is in flight
        events = sse_events((await call).text)
        assert events[-1]["choices"][0]["finish_reason"] == "length" and "error" not in events[-1]


# -- the real process ------------------------------------------------------------------------------


def gateway(*args: str) -> subprocess.Popen:
    return spawn([sys.executable, "-m", "gateway", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Its exit status and output; its process group is stopped whatever happens."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc, grace=10)
    return proc.returncode, out


@contextlib.contextmanager
def listening(port: int):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--http_port", "{busy}"), "port {busy} (--http_port) on 127.0.0.1 is already in use"),
        (("--grpc_port", "{busy}"), "port {busy} (--grpc_port) on 127.0.0.1 is already in use"),
        (("--http_port", "{free}", "--grpc_port", "{free}"), "--http_port and --grpc_port are both {free}"),
        (("--http_port", "70000"), "70000 (--http_port) is not a port number"),
        (("--host", "no.such.host.invalid"), "cannot listen on --host 'no.such.host.invalid'"),
        (("--api_key_file", "/nonexistent/keys"), "No such file or directory"),
    ],
)
def test_start_up_mistakes_are_one_line_before_any_model_loads(tiny_dir, args, says):
    busy, free = free_port(), free_port()
    fill = {"busy": busy, "free": free}
    args = tuple(a.format(**fill) for a in args)
    defaults = {"--host": "127.0.0.1", "--http_port": str(free_port()), "--grpc_port": str(free_port())}
    for flag, value in defaults.items():
        if flag not in args:
            args = (*args, flag, value)
    with listening(busy):
        code, out = finished(gateway("--model_dir", str(tiny_dir), *args))
    assert code == 1, out
    lines = [line for line in out.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and says.format(**fill) in lines[0], out
    assert "Traceback" not in out and "Engine:" not in out  # refused before the model was looked at


@pytest.mark.parametrize(("flag", "value"), [("--max_num_seqs", "0"), ("--chat_template_timeout", "-1"), ("--max_waiting", "-5")])
def test_impossible_values_are_usage_errors(flag, value):
    code, out = finished(gateway(flag, value))
    assert code == 2 and f"{flag} must" in out and "Traceback" not in out, out


def test_sigterm_drains_and_exits_0(tiny_dir):
    """SIGTERM while a stream runs: readiness is 503 and new work is refused over the open
    listener, the stream ends well-formed (completed within the grace period, or stopped with an
    in-band error), the process exits 0."""
    port = free_port()
    proc = gateway("--model_dir", str(tiny_dir), "--model_name", "tiny", "--host", "127.0.0.1", "--http_port", str(port),
                   "--grpc_port", str(free_port()), "--shutdown_grace_period", "600", "--backend", "huggingface")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=600) as http:
            for _ in range(3000):
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{base}/ready").status_code == 200:
                        break
                assert proc.poll() is None, proc.stdout.read()
                import time

                time.sleep(0.1)
            with http.stream("POST", f"{base}/openai/v1/completions", json=STREAM) as s:
                lines = s.iter_lines()
                body = []
                for line in lines:
                    body.append(line)
                    if line.startswith("data: {"):
                        proc.send_signal(signal.SIGTERM)
                        break
                ready = http.get(f"{base}/ready")
                assert ready.status_code == 503 and ready.json()["draining"] is True
                refused = http.post(f"{base}/openai/v1/completions", json={**STREAM, "stream": False})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "service_unavailable"
                body += list(lines)
            events = sse_events("\n".join(body) + "\n")
            assert events[-1]["choices"][0]["finish_reason"] == "length"  # 600 s is enough for 64 tokens
        code, out = finished(proc)
        assert code == 0, out
        assert "Traceback" not in out
        assert "usable CPU(s)" in out and "threads (" in out  # the thread sizing is logged once at start
    finally:
        stop_group(proc, grace=10)
