"""The serving path alone: how many generated tokens per second one CPU core of this gateway can
carry on each face, with no model behind it.

    python scripts/bench_serving_path.py [--seconds 15] [--clients 32] [--out docs/bench/serving_path.md]

SYNTHETIC BACKEND, on purpose and only here: the server process runs the real app (middleware,
faces, frontend, `ChoiceState` detokenization, SSE, usage, metrics) over a backend that produces
tokens as fast as it is asked, instead of a model. The server is pinned to one core, the load
generator to the other, so the numbers say what one core of the frontend can carry: if a GPU
engine produces more tokens per second than this, the gateway caps it.

Faces: OpenAI chat streaming (one SSE chunk per token), OpenAI completions non-streaming, KServe
v2 REST and v2 gRPC (non-streaming). Each request asks for --tokens tokens (ignore_eos).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the server side: the real app over a synthetic backend ---------------------------------------


class SyntheticBackend:
    """SYNTHETIC: a backend that 'generates' a fixed cycle of ordinary token ids, one step for every
    running part per loop turn, as fast as the frontend takes them. Everything above it is real."""

    def __init__(self, loaded, served_name: str) -> None:
        from engines.backend import LoadedBackend

        self._base = LoadedBackend(loaded, served_name=served_name)
        self.capabilities = self._base.capabilities
        self.tokenizer = self._base.tokenizer
        self.grammars = None
        self.max_in_flight = 4096
        self._cycle = [t for t in self.tokenizer.encode(" the quick brown fox jumps over the lazy dog", add_special_tokens=False)]
        self._parts: dict[str, list] = {}
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="synthetic")
        self._thread.start()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def check_health(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {"running": len(self._parts), "waiting": 0}

    def unsupported(self, params):
        return None

    def submit(self, request_id, prompt_ids, params, deadline, emit) -> None:
        from engines.choice import ChoiceState, output_budget

        choice = ChoiceState(self.tokenizer, prompt_ids, params, eos_token_ids=self.tokenizer.eos_token_ids,
                             budget=output_budget(params, len(prompt_ids), self.capabilities.max_model_len))
        with self._lock:
            self._parts[request_id] = [choice, emit, 0]
            self._lock.notify()

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._parts.pop(request_id, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._parts:
                    self._lock.wait()
                parts = list(self._parts.items())
            for rid, part in parts:
                choice, emit, i = part
                delta = choice.step(self._cycle[i % len(self._cycle)])
                part[2] = i + 1
                if choice.finished:
                    with self._lock:
                        self._parts.pop(rid, None)
                emit(delta)
            time.sleep(0.001)  # one "step" per millisecond at most: the gateway, not this loop, is measured


def serve(port: int, grpc_port: int) -> None:
    os.sched_setaffinity(0, {0})  # one core for the whole server process
    import uvicorn

    from engines.frontend import EngineFrontend
    from engines.loader import ModelSpec, load_model
    from gateway.server import build_grpc_server, create_app
    from gateway.settings import Settings

    loaded = load_model(ModelSpec(), weights=False)  # the packaged model's tokenizer and config only
    settings = Settings(model_name="model", disable_log_requests=True, max_request_parts=4096)
    app = create_app(settings, EngineFrontend(SyntheticBackend(loaded, "model")))

    async def main() -> None:
        grpc_server = build_grpc_server(app)
        grpc_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await grpc_server.start()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        await uvicorn.Server(config).serve()

    asyncio.run(main())


# -- the load side --------------------------------------------------------------------------------


async def drive(face: str, base: str, grpc_port: int, clients: int, seconds: float, tokens: int) -> tuple[float, int]:
    """(tokens per second carried, requests completed) over `seconds` of closed-loop load."""
    import aiohttp
    import grpc

    from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb
    from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

    stop_at = time.perf_counter() + seconds
    carried = 0
    done = 0

    async def http_client(session: aiohttp.ClientSession) -> None:
        nonlocal carried, done
        while time.perf_counter() < stop_at:
            if face == "openai chat, streaming":
                body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}}
                async with session.post("/openai/v1/chat/completions", json=body) as r:
                    usage = None
                    async for line in r.content:
                        if line.startswith(b"data: {") and b'"usage":{' in line:
                            usage = line
                    assert r.status == 200 and usage is not None
            elif face == "openai completions":
                body = {"prompt": "hi", "max_tokens": tokens, "ignore_eos": True}
                async with session.post("/openai/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
            else:
                body = {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["hi"]}], "parameters": {"max_tokens": tokens}}
                async with session.post("/v2/models/model/infer", json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
            carried += tokens
            done += 1

    async def grpc_client(stub) -> None:
        nonlocal carried, done
        while time.perf_counter() < stop_at:
            req = pb.ModelInferRequest(model_name="model")
            req.inputs.add(name="input-0", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"hi")
            req.parameters["max_tokens"].int64_param = tokens
            await stub.ModelInfer(req)
            carried += tokens
            done += 1

    started = time.perf_counter()
    if face == "kserve v2 grpc":
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await asyncio.gather(*(grpc_client(stub) for _ in range(clients)))
    else:
        connector = aiohttp.TCPConnector(limit=clients + 4)
        async with aiohttp.ClientSession(base_url=base, connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
            await asyncio.gather(*(http_client(session) for _ in range(clients)))
    return carried / (time.perf_counter() - started), done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=int, nargs=2, metavar=("HTTP_PORT", "GRPC_PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return

    import httpx

    from scripts.servers import cpu_model, free_port, report, stop_group

    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(grpc_port)], cwd=ROOT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the synthetic server did not start")
            time.sleep(0.3)
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[1:]))  # the client off the server's core
        rows = []
        for face in ("openai chat, streaming", "openai completions", "kserve v2 rest", "kserve v2 grpc"):
            asyncio.run(drive(face, base, grpc_port, 4, 2.0, args.tokens))  # warm-up
            rate, done = asyncio.run(drive(face, base, grpc_port, args.clients, args.seconds, args.tokens))
            rows.append((face, rate, done))
            print(f"{face:26s} {rate:9.0f} tokens/s carried ({done} requests of {args.tokens} tokens)", flush=True)
    finally:
        stop_group(server)
    lines = [
        f"CPU: {cpu_model()}; server pinned to one core, load generator on another. SYNTHETIC backend (no model): "
        f"the real app, frontend, detokenization, SSE and metrics over a token source; {args.clients} clients, "
        f"{args.tokens} tokens per request, {args.seconds:.0f} s per face.",
        "",
        "| face | tokens/s one server core carries | requests |",
        "| --- | ---: | ---: |",
        *[f"| {face} | {rate:.0f} | {done} |" for face, rate, done in rows],
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
