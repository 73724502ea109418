"""Small helpers for reading SSE bodies and streams in tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

# What the engine under test cannot honour: a request using it must be a 400 naming the request's
# own parameter (engines/openvino/engine.py lists OpenVINO's, by their neutral names).
REFUSED = {
    "openvino": frozenset({"top_logprobs", "prompt_logprobs", "logit_bias", "structured_outputs.grammar"}),
}.get(os.environ.get("HF_GATEWAY_TEST_ENGINE", "transformers"), frozenset())


async def refused_here(feature: str, call: Any, param: str) -> bool:
    """Where the engine under test cannot honour `feature`, check that `call()` (an SDK call)
    is refused with a 400 naming `param`, and return True: the test has checked what it can.
    Elsewhere return False and let the test go on."""
    if feature not in REFUSED:
        return False
    import openai

    try:
        await call()
    except openai.BadRequestError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        assert body.get("param") == param and body.get("code") == "unsupported_value", exc.body
        return True
    raise AssertionError(f"{feature} is not supported by this engine, yet the request succeeded")


def sse_events(body: str) -> list[Any]:
    """Parse a raw SSE body strictly: `\\n` framing only, data lines only (comments allowed)."""
    assert "\r" not in body, "events must be framed with \\n, not \\r\\n"
    assert body.endswith("data: [DONE]\n\n"), body[-200:]
    events: list[Any] = []
    for block in body.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        payload = lines[0][len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events[:-1]


def reference_logits(model_dir, arch, texts):
    """Plain transformers, one text at a time: (input ids, logits) per text, the ground truth."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = getattr(transformers, arch).from_pretrained(model_dir).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            out.append((enc["input_ids"][0].tolist(), model(**enc).logits[0]))
    return out


def reference_padded_logits(model_dir, arch, texts):
    """Plain transformers, the texts as one batch padded to the longest, as KServe runs them:
    logits [n, width, labels] (padding positions included)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = getattr(transformers, arch).from_pretrained(model_dir).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def metric_sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", re.M)
    total = 0.0
    for found_labels, value in pattern.findall(text):
        if all(part in found_labels.split(",") for part in want.split(",") if part):
            total += float(value)
    return total


async def eventually(condition, what: str, limit: float = 300.0, interval: float = 0.02) -> None:
    """Wait until `condition()` holds. The limit only guards against a hang: nothing here assumes
    how fast a busy machine is."""
    import asyncio
    import time

    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(interval)


def eventually_sync(condition, what: str, limit: float = 300.0, interval: float = 0.05) -> None:
    import time

    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)


@contextlib.asynccontextmanager
async def serving_grpc(server):
    """Start a built gRPC server on a free loopback port; yield a channel to it; stop it."""
    import grpc

    from tests.conftest import free_port

    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def grpc_channel(app):
    """A channel to the app's real gRPC server (keys, records, metrics)."""
    from gateway.server import build_grpc_server

    async with serving_grpc(build_grpc_server(app)) as channel:
        yield channel


class HeldEngine:
    """The real engine; each generation pauses after its first delta until `release()` (polled,
    so the server's thread and the test's loop need not share an event loop).

    An engine that runs ahead of its reader (vLLM) may hand over a whole generation as that first
    delta on a busy machine; `held_finished` counts those, which have nothing left to abort."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.holding = 0
        self.held_finished = 0
        self.released = False

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def release(self) -> None:
        self.released = True

    async def generate(self, prompt, params, ctx):
        import asyncio

        stream = self._engine.generate(prompt, params, ctx)
        try:
            first = True
            async for delta in stream:
                yield delta
                if first:
                    first = False
                    self.held_finished += delta.finish_reason is not None
                    self.holding += 1
                    while not self.released:
                        await asyncio.sleep(0.01)
        finally:
            await stream.aclose()
