"""Which engine serves a model, and why: KServe's backend rule, with one log line and clear errors.

`auto` takes vLLM when it imports and supports the model's architecture (and task), else the
transformers engine; `vllm` without vLLM is an error; `huggingface` forces transformers. The
result is always the `EngineFrontend` over the chosen backend.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from engines.frontend import EngineFrontend
from engines.options import BACKENDS, EngineOptions
from engines.loader import LoadedModel, ModelNotFoundError, ModelSpec, load_model

log = logging.getLogger("gateway")

class EngineStartError(RuntimeError):
    """A problem that stops the engine from loading; its message is shown to the user as is.
    `usage` marks a command-line mistake (exit status 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class UnknownEngineFlags(EngineStartError):
    """Flags nobody defines were given; `hint` says why they were not taken as vLLM's."""

    def __init__(self, hint: str = "") -> None:
        super().__init__("unknown flags", usage=True)
        self.hint = hint


@contextlib.contextmanager
def model_errors_stop_startup() -> Iterator[None]:
    """A model that cannot be found or read stops start-up with its message."""
    try:
        yield
    except (ModelNotFoundError, ValueError, OSError) as exc:
        raise EngineStartError(str(exc)) from None


def select_engine(spec: ModelSpec, served_name: str, options: EngineOptions) -> EngineFrontend:
    """Pick and load the engine (blocking: seconds to minutes).

    `auto` on a machine without a GPU tries OpenVINO, then vLLM, then takes transformers (measured
    side by side on this project's CPU, `make bench`: OpenVINO 1.9-2.4x plain vLLM's tokens/s at
    1-32 streams, and 0.04-0.5x its time to first token); with a GPU it tries vLLM, then takes
    transformers (OpenVINO serves on the CPU here). `vllm` and `openvino` take that engine or fail
    saying why not. One log line says which engine serves and why."""
    auto = ("vllm",) if _has_gpu() else ("openvino", "vllm")
    wanted = {"auto": auto, "vllm": ("vllm",), "openvino": ("openvino",)}.get(options.backend, ())
    light: LoadedModel | None = None
    refusals: list[str] = []
    for name in wanted:
        if name == "vllm":
            from engines import vllm as candidate
        else:
            from engines import openvino as candidate  # type: ignore[no-redef]
        if not candidate.installed():
            refusals.append(candidate.NOT_INSTALLED)
            continue
        if light is None:
            with model_errors_stop_startup():
                light = load_model(spec, weights=False)  # config and tokenizer only
        reason = candidate.probe(light.config, light.task, light.location)
        if reason is None and name == "vllm":
            return _load_vllm(spec, served_name, options, light)
        if reason is None:
            try:
                return _load_openvino(spec, served_name, options, light)
            except EngineStartError as exc:
                if options.backend != "auto" or exc.usage:
                    raise
                reason = f"OpenVINO could not take the model ({exc})"
        refusals.append(reason)
    if options.backend in ("vllm", "openvino"):
        raise EngineStartError(f"Backend is set to '{options.backend}' but {refusals[0]}.")
    reason = "--backend huggingface" if options.backend == "huggingface" else f"--backend auto: {'; '.join(refusals)}"
    if options.engine_args:
        hint = "" if options.backend == "huggingface" else " (vLLM engine flags are accepted only when the vLLM engine serves)"
        raise UnknownEngineFlags(hint)
    if options.lora_modules:
        raise EngineStartError("--lora-modules needs the vLLM engine (LoRA adapters are served by vLLM only).")
    from engines.hf import load_engine

    log.info("Engine: transformers (%s)", reason)
    with model_errors_stop_startup():
        return load_engine(
            spec, served_name=served_name, max_num_seqs=options.max_num_seqs, max_waiting=options.max_waiting,
            kv_cache_memory_gb=options.kv_cache_memory_gb, prefix_cache_memory_gb=options.prefix_cache_memory_gb,
            encoder_batch_wait_ms=options.encoder_batch_wait_ms,
            encoder_max_batch=options.encoder_max_batch, cpu_threads=options.cpu_threads, adaptive_threads=options.adaptive_cpu_threads,
        )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _load_openvino(spec: ModelSpec, served_name: str, options: EngineOptions, light: LoadedModel) -> EngineFrontend:
    import openvino_genai

    from engines import openvino as ov_backend

    if options.engine_args:
        raise UnknownEngineFlags(" (vLLM engine flags are accepted only when the vLLM engine serves)")
    if options.lora_modules:
        raise EngineStartError("--lora-modules needs the vLLM engine (LoRA adapters are served by vLLM only).")
    archs = ", ".join(getattr(light.config, "architectures", None) or [])
    log.info("Engine: OpenVINO GenAI %s (backend=%s: it serves %s for %s on this CPU)", openvino_genai.__version__.split("-")[0],
             options.backend, archs, light.task.value)
    with model_errors_stop_startup():
        try:
            return ov_backend.load_engine(
                spec, served_name=served_name, max_num_seqs=options.max_num_seqs, max_waiting=options.max_waiting,
                kv_cache_memory_gb=options.kv_cache_memory_gb, cpu_threads=options.cpu_threads, loaded=light,
            )
        except RuntimeError as exc:
            raise EngineStartError(str(exc)) from None


def _load_vllm(spec: ModelSpec, served_name: str, options: EngineOptions, light: LoadedModel) -> EngineFrontend:
    import vllm

    from engines import vllm as vllm_backend
    from engines.vllm.args import EngineArgsError

    archs = ", ".join(getattr(light.config, "architectures", None) or [])
    log.info("Engine: vLLM %s (backend=%s: vLLM imports and supports %s for %s)", vllm.__version__, options.backend, archs, light.task.value)
    with model_errors_stop_startup():
        try:
            return vllm_backend.load_engine(
                spec, served_name=served_name, max_num_seqs=options.max_num_seqs, max_waiting=options.max_waiting,
                kv_cache_memory_gb=options.kv_cache_memory_gb, engine_argv=options.engine_args, lora_modules=options.lora_modules,
                loaded=light,
            )
        except EngineArgsError as exc:  # a ValueError, but the user's flags are at fault: exit 2
            raise EngineStartError(f"hf-gateway: error: {exc}", usage=True) from None


__all__ = ["BACKENDS", "EngineOptions", "EngineStartError", "UnknownEngineFlags", "model_errors_stop_startup", "select_engine"]
