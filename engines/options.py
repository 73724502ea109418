"""The engines' sections of the settings: each default is defined here, once, and the command
line (`gateway.settings`) takes it from here. Plain values only (importing this loads no torch)."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "huggingface", "vllm", "openvino")


@dataclass(frozen=True)
class EngineOptions:
    """The serving flags the engines read (their section of the settings)."""

    backend: str = "auto"
    max_num_seqs: int = 32
    max_waiting: int = 256
    kv_cache_memory_gb: float = 4.0
    prefix_cache_memory_gb: float = 1.0  # transformers engine: KV of finished sequences kept for reuse (0: off)
    encoder_batch_wait_ms: float = 0.0  # no wait: requests that arrive during a pass form the next
    encoder_max_batch: int = 64
    cpu_threads: int | None = None
    adaptive_cpu_threads: bool = True
    engine_args: tuple[str, ...] = ()  # flags we do not define: vLLM's own engine arguments
    lora_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestLimits:
    """The operator's bounds on one generation request, the same on every face. Each refusal is a
    400 naming the parameter (in the engine's neutral names; a face may rename them)."""

    max_request_parts: int = 64  # prompts x choices (OpenAI), instances (v1), batch rows (v2, gRPC)
    max_prompt_tokens: int | None = None
    max_total_tokens: int | None = None  # generated tokens over every part
    max_scored_prompt_tokens: int = 8192  # prompt tokens scored (echo + logprobs) over every part
    max_stop_length: int = 256
