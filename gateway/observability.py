"""Metrics, per-request records and the engine as the faces see it.

`ObservedEngine` wraps the real engine once, in the composition root, so every face (OpenAI,
KServe v1/v2 REST, gRPC) is measured the same way: KServe's stage histograms, the LLM latency
histograms (time to first token, time per output token, inter-token latency), token counters,
aborts and errors by code, and the per-request deadline. Engine gauges (running, waiting, batch
size, KV cache) are read from `engine.stats()` at scrape time.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from engines import Engine, EngineError, ErrorCode
from engines.frontend import Admission, RequestLimits
from engines.types import EngineStats, GenerationDelta, GenerationParams, RequestContext

access_log = logging.getLogger("gateway.access")

_ENGINE_CODES = frozenset(code.value for code in ErrorCode)
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes; the access log line is written from it."""

    request_id: str
    route: str
    started: float = field(default_factory=time.monotonic)
    deadline: float | None = None
    model: str = ""
    status: int | str = 0  # HTTP status, or the gRPC status name
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    engine_started: float | None = None
    engine_finished: float | None = None
    error: str | None = None
    finish_reasons: set[str] = field(default_factory=set)  # how its generations ended
    aborted: bool = False  # a generation was stopped before its end (client gone, cancel, sibling failed)
    client_left: bool = False  # the client went away before the response ended

    @property
    def outcome(self) -> str | None:
        """How the request ended, for the access line: `aborted`, `error`, or its finish reasons."""
        if self.aborted or self.client_left:
            return "aborted"
        if self.error:
            return "error"
        return ",".join(sorted(self.finish_reasons)) or None


current_request: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("current_request", default=None)

# A client's request id is kept when it is a plain token (UUIDs, W3C trace ids, ...); anything
# else is replaced by one of ours, so it can neither forge log fields nor carry odd bytes.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@#-]{1,128}")
# A plain-format log value that needs no quotes: no spaces, quotes, '=' or control characters.
_BARE_VALUE = re.compile(r"[!#-<>-~]+")


def safe_request_id(raw: str | bytes | None) -> str | None:
    if not raw:
        return None
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    return text if _REQUEST_ID.fullmatch(text) else None


def _logfmt(value: object) -> str:
    """One value of the plain access line: bare when it is a plain token, else a JSON string
    (quoted, with escapes), so no value can add or change fields."""
    if value is None:
        return "-"
    text = str(value)
    return text if _BARE_VALUE.fullmatch(text) else json.dumps(text)


class Metrics:
    """One registry per app, so tests and several apps in one process do not collide."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        r = self.registry
        labels = ["model_name"]
        # KServe's names, on every face.
        self.preprocess = Histogram("request_preprocess_seconds", "Request parsing, templating and tokenization", labels, registry=r, buckets=_LATENCY)
        self.predict = Histogram("request_predict_seconds", "Time in the engine", labels, registry=r, buckets=_LATENCY)
        self.postprocess = Histogram("request_postprocess_seconds", "From the engine's last output to the response's end", labels, registry=r, buckets=_LATENCY)
        # What LLM operators ask for.
        self.ttft = Histogram("gateway_time_to_first_token_seconds", "Time to first token", labels, registry=r, buckets=_LATENCY)
        self.tpot = Histogram("gateway_time_per_output_token_seconds", "Mean time per output token after the first, per request", labels, registry=r, buckets=_TOKEN_LATENCY)
        self.itl = Histogram("gateway_inter_token_latency_seconds", "Time between consecutive engine outputs", labels, registry=r, buckets=_TOKEN_LATENCY)
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter("gateway_generation_tokens", "Tokens generated", labels, registry=r)
        self.requests = Counter("gateway_requests", "Requests answered, by face and status", ["model_name", "face", "status"], registry=r)
        self.aborted = Counter("gateway_requests_aborted", "Requests whose generation was stopped before its end (client gone, cancelled)", labels, registry=r)
        self.aborted_parts = Counter("gateway_generations_aborted", "Generations (parts of requests: choices, prompts, instances) stopped before their end", labels, registry=r)
        self.errors = Counter("gateway_request_errors", "Requests that ended with an engine error, by code", ["model_name", "code"], registry=r)

    def labels(self) -> dict[str, str]:
        return {"model_name": self.model_name}

    def watch_engine(self, engine: Engine) -> None:
        self.registry.register(_EngineCollector(engine, self.model_name))


class _EngineCollector:
    """Gauges read from the engine when Prometheus scrapes."""

    _GAUGES = {
        "running": ("gateway_requests_running", "Requests being generated"),
        "waiting": ("gateway_requests_waiting", "Requests waiting for a batch slot"),
        "batch_size": ("gateway_batch_size", "Rows in the transformers engine's last decoding step"),
        "kv_cache_tokens": ("gateway_kv_cache_tokens", "Token slots (rows x width) in the transformers engine's KV cache"),
        "kv_cache_capacity_tokens": ("gateway_kv_cache_capacity_tokens", "KV-cache budget of the transformers engine, in token slots"),
        "cpu_threads": ("gateway_cpu_threads", "Intra-op CPU threads the transformers engine decodes with now (chosen as it runs)"),
        "prefix_cache_hits": ("gateway_prefix_cache_hits", "Prompts the transformers engine started from a kept prefix (since start)"),
        "prefix_cache_reused_tokens": ("gateway_prefix_cache_reused_tokens", "Prompt tokens the prefix cache spared the transformers engine (since start)"),
    }

    def __init__(self, engine: Engine, model_name: str) -> None:
        self._engine = engine
        self._model = model_name

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._engine.stats()
        for key, (name, doc) in self._GAUGES.items():
            value = getattr(stats, key)
            if value is not None:
                family = GaugeMetricFamily(name, doc, labels=["model_name"])
                family.add_metric([self._model], float(value))
                yield family


class ObservedEngine:
    """The real engine plus metrics, the request record, the request deadline and the operator's
    request limits (`admit` applies them, so every face gets the same ones)."""

    def __init__(self, engine: Engine, metrics: Metrics, limits: RequestLimits = RequestLimits()) -> None:
        self._engine = engine
        self._metrics = metrics
        self.limits = limits

    # -- pass-through -------------------------------------------------------------------------

    @property
    def inner(self) -> Engine:
        return self._engine

    @property
    def capabilities(self):  # type: ignore[no-untyped-def]
        return self._engine.capabilities

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self._engine.tokenizer

    async def start(self) -> None:
        await self._engine.start()

    async def stop(self) -> None:
        await self._engine.stop()

    async def check_health(self) -> bool:
        return await self._engine.check_health()

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def stats(self) -> EngineStats:
        return self._engine.stats()

    async def admit(self, prompts: Sequence[Sequence[int]], params: GenerationParams, choices: int = 1, *,
                    prompt_param: str = "prompt") -> Admission:
        """A whole generation request through the engine's admission, under this server's limits."""
        record = current_request.get()
        deadline = record.deadline if record is not None else None
        try:
            return await self._engine.admit(prompts, params, choices, limits=self.limits, prompt_param=prompt_param, deadline=deadline)
        except EngineError as exc:
            self._error(exc, record)
            raise

    # -- measured -----------------------------------------------------------------------------

    def _context(self, ctx: RequestContext) -> tuple[RequestContext, RequestRecord | None]:
        record = current_request.get()
        if record is not None:
            if record.engine_started is None:
                record.engine_started = time.monotonic()
                self._metrics.preprocess.labels(**self._metrics.labels()).observe(record.engine_started - record.started)
            if record.deadline is not None and ctx.deadline is None:
                ctx = replace(ctx, deadline=record.deadline)
        return ctx, record

    def _error(self, exc: EngineError, record: RequestRecord | None) -> None:
        """A request's error is counted once, when it ends (`finish_record`); outside a request, now."""
        if record is not None:
            record.error = record.error or exc.code.value
        else:
            self._metrics.errors.labels(model_name=self._metrics.model_name, code=exc.code.value).inc()

    async def generate(self, prompt: str | Sequence[int], params: GenerationParams, ctx: RequestContext) -> AsyncIterator[GenerationDelta]:
        m, labels = self._metrics, self._metrics.labels()
        ctx, record = self._context(ctx)
        start = time.monotonic()
        first = last = None
        finished = False
        prompt_tokens = completion_tokens = 0  # what this part has really cost so far
        stream = self._engine.generate(prompt, params, ctx)
        try:
            async for delta in stream:
                now = time.monotonic()
                prompt_tokens, completion_tokens = delta.prompt_tokens, delta.completion_tokens
                if delta.token_ids:
                    if first is None:
                        first = now
                        m.ttft.labels(**labels).observe(now - start)
                        if record is not None and record.ttft is None:
                            record.ttft = now - record.started
                    else:
                        m.itl.labels(**labels).observe(now - last)  # type: ignore[operator]
                    last = now
                if delta.finish_reason is not None:
                    finished = True
                    if first is not None and last is not None and delta.completion_tokens > 1:
                        m.tpot.labels(**labels).observe((last - first) / (delta.completion_tokens - 1))
                    if record is not None:
                        record.finish_reasons.add(delta.finish_reason)
                yield delta
        except EngineError as exc:
            finished = True
            self._error(exc, record)
            raise
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            end = time.monotonic()
            m.predict.labels(**labels).observe(end - start)
            # Tokens count when they were produced, whether the part finished, failed or was stopped.
            m.prompt_tokens.labels(**labels).inc(prompt_tokens)
            m.generation_tokens.labels(**labels).inc(completion_tokens)
            if record is not None:
                record.engine_finished = end
                record.prompt_tokens += prompt_tokens
                record.completion_tokens += completion_tokens
            if not finished:
                m.aborted_parts.labels(**labels).inc()
                if record is not None:
                    record.aborted = True
                else:
                    m.aborted.labels(**labels).inc()

    async def _pooled(self, method: str, inputs: Sequence[Sequence[int]], ctx: RequestContext, **extra: Any) -> Any:
        m, labels = self._metrics, self._metrics.labels()
        ctx, record = self._context(ctx)
        start = time.monotonic()
        try:
            results = await getattr(self._engine, method)(inputs, ctx, **extra)
        except EngineError as exc:
            self._error(exc, record)
            raise
        finally:
            end = time.monotonic()
            m.predict.labels(**labels).observe(end - start)
            if record is not None:
                record.engine_finished = end
        tokens = sum(len(ids) for ids in inputs)
        m.prompt_tokens.labels(**labels).inc(tokens)
        if record is not None:
            record.prompt_tokens += tokens
        return results

    async def embed(self, inputs, ctx):  # type: ignore[no-untyped-def]
        return await self._pooled("embed", inputs, ctx)

    async def classify(self, inputs, ctx):  # type: ignore[no-untyped-def]
        return await self._pooled("classify", inputs, ctx)

    async def classify_tokens(self, inputs, ctx, pad_to=None):  # type: ignore[no-untyped-def]
        return await self._pooled("classify_tokens", inputs, ctx, **({"pad_to": pad_to} if pad_to else {}))

    async def fill_mask(self, inputs, ctx):  # type: ignore[no-untyped-def]
        return await self._pooled("fill_mask", inputs, ctx)


def finish_record(record: RequestRecord, metrics: Metrics, *, face: str, log_format: str | None) -> None:
    """The end of a request: postprocess time, the request counter and one access-log line."""
    end = time.monotonic()
    if record.engine_finished is not None:
        metrics.postprocess.labels(**metrics.labels()).observe(max(0.0, end - record.engine_finished))
    if record.client_left:  # nginx's "client closed request", also when the response had begun
        record.status = "CANCELLED" if isinstance(record.status, str) or record.route.startswith("grpc ") else 499
    metrics.requests.labels(model_name=metrics.model_name, face=face, status=str(record.status)).inc()
    if record.outcome == "aborted":
        metrics.aborted.labels(**metrics.labels()).inc()
    if record.error and record.error in _ENGINE_CODES:
        metrics.errors.labels(model_name=metrics.model_name, code=record.error).inc()
    if log_format is None or not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": record.request_id,
        "route": record.route,
        "model": record.model or metrics.model_name,
        "status": record.status,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "ttft_ms": None if record.ttft is None else round(record.ttft * 1000, 1),
        "total_ms": round((end - record.started) * 1000, 1),
    }
    if record.outcome is not None:  # a request that generated: finish reasons, `aborted` or `error`
        fields["outcome"] = record.outcome
    if record.error:
        fields["error"] = record.error
    if log_format == "json":
        access_log.info(json.dumps(fields))
    else:
        access_log.info(" ".join(f"{k}={_logfmt(v)}" for k, v in fields.items()))
