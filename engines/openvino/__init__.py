"""The OpenVINO engine (`--backend openvino`), imported lazily like vLLM's.

`probe()` says whether OpenVINO GenAI can serve this model here and why not; `ensure_ir()` turns
a Hugging Face checkpoint into OpenVINO IR once (a child process running optimum-intel, cached
by the checkpoint's content) or takes an exported IR directory as it is; `load_engine()` builds
the engine, whose pipeline runs in its own process (`engines.openvino.worker`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engines.loader import LoadedModel, ModelSpec, cache_root, content_digest, load_model
from engines.options import EngineOptions
from engines.tasks import Task

log = logging.getLogger(__name__)

OPENVINO_TASKS = frozenset({Task.text_generation})
IR_FILE = "openvino_model.xml"
# Our --dtype as (weights in the exported IR, the CPU plugin's inference precision); `auto` lets
# OpenVINO choose: bf16 where the CPU has AMX or AVX512-BF16, f32 otherwise.
_PRECISION = {
    "float32": ("fp32", "f32"),
    "float": ("fp32", "f32"),
    "bfloat16": ("fp16", "bf16"),
    "float16": ("fp16", "f16"),
    "half": ("fp16", "f16"),
    "auto": ("fp16", None),
}


NOT_INSTALLED = "OpenVINO GenAI is not installed (from a checkout: make openvino-env, then make serve-openvino)"


def installed() -> bool:
    return importlib.util.find_spec("openvino_genai") is not None


def is_ir_dir(location: str) -> bool:
    return Path(location, IR_FILE).is_file()


def probe(config: Any, task: Task, location: str) -> str | None:
    """None when OpenVINO can serve this model, else the reason it cannot."""
    if not installed():
        return NOT_INSTALLED
    if task not in OPENVINO_TASKS:
        return f"task {task.value} is served by the transformers engine (OpenVINO serves text_generation here)"
    if is_ir_dir(location):
        return None
    if importlib.util.find_spec("optimum.intel") is None:
        return "the model is not OpenVINO IR and optimum-intel (which converts it) is not installed"
    return None  # whether optimum-intel can convert this architecture shows when it tries


def ensure_ir(location: str, dtype: str, cache_dir: str | None = None) -> Path:
    """The OpenVINO IR directory for a checkpoint: the checkpoint itself when it is IR, else a
    conversion made once and kept under the cache, keyed by the checkpoint's content and the
    versions and weight format that made it."""
    if is_ir_dir(location):
        return Path(location)
    weights, _ = _PRECISION[dtype]
    versions = ":".join(importlib.metadata.version(p) for p in ("openvino", "optimum-intel"))
    key = hashlib.sha256(f"{content_digest(Path(location))}:{weights}:{versions}".encode()).hexdigest()[:12]
    target = cache_root(cache_dir) / "openvino" / f"{Path(location).resolve().name}-{key}"
    if is_ir_dir(str(target)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    log.info("Converting %s to OpenVINO IR once (weights %s) into %s; later starts load it directly", location, weights, target)
    started = time.monotonic()
    try:
        _export(location, tmp, weights)
        try:
            os.replace(tmp, target)
        except OSError:  # another process converted it first
            if not is_ir_dir(str(target)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("OpenVINO IR ready in %.1f s", time.monotonic() - started)
    return target


def _export(location: str, output: Path, weights: str) -> None:
    """optimum-intel in a child process; its output lines go to our log as progress."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    process = subprocess.Popen(
        [sys.executable, "-m", "engines.openvino.convert", location, str(output), weights],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        if line:
            log.info("openvino export: %s", line[-200:])
            tail = (tail + [line])[-20:]
    if process.wait() != 0 or not is_ir_dir(str(output)):
        raise RuntimeError("Converting the model to OpenVINO failed:\n" + "\n".join(tail))


def precision(dtype: str) -> tuple[dict[str, Any], str]:
    """The CPU plugin's properties for our --dtype, and the precision it will compute in."""
    _, hint = _PRECISION[dtype]
    if hint is not None:
        return {"INFERENCE_PRECISION_HINT": hint}, {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[hint]
    import openvino as ov

    hinted = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    default = hinted.to_string() if hasattr(hinted, "to_string") else str(hinted)
    return {}, {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(default, default)


def load_engine(
    spec: ModelSpec,
    *,
    served_name: str,
    max_num_seqs: int = EngineOptions.max_num_seqs,
    max_waiting: int = EngineOptions.max_waiting,
    kv_cache_memory_gb: float = EngineOptions.kv_cache_memory_gb,
    cpu_threads: int | None = None,
    loaded: LoadedModel | None = None,
):
    """Tokenizer and config here; the IR is converted if needed, the pipeline starts in `start()`."""
    from engines.frontend import EngineFrontend
    from engines.openvino.engine import OpenVINOEngine

    loaded = loaded or load_model(spec, weights=False)
    ir = ensure_ir(loaded.location, spec.dtype, spec.cache_dir)
    properties, computes_in = precision(spec.dtype)
    if cpu_threads:
        properties["INFERENCE_NUM_THREADS"] = int(cpu_threads)
    options = {
        "model_dir": str(ir),
        "kv_cache_gb": kv_cache_memory_gb,
        "max_num_seqs": max_num_seqs,
        # Prompt tokens per step: long prompts are prefilled in chunks of this many, between the
        # decode steps of running streams.
        "max_num_batched_tokens": 256,
        "prefix_caching": True,  # chat clients resend the conversation every turn
        "properties": properties,
    }
    return EngineFrontend(OpenVINOEngine(loaded, served_name=served_name, worker_options=options, max_num_seqs=max_num_seqs,
                                         max_waiting=max_waiting, precision=computes_in))


__all__ = ["NOT_INSTALLED", "OPENVINO_TASKS", "ensure_ir", "installed", "is_ir_dir", "load_engine", "probe"]
