"""The transformers engines: generation on a scheduler thread, encoders on a worker thread."""

from __future__ import annotations

from engines.frontend import EngineFrontend
from engines.hf.encoder import HFEncoderEngine
from engines.hf.engine import HFEngine
from engines.hf.seq2seq import HFSeq2SeqEngine
from engines.loader import ModelSpec, load_model
from engines.options import EngineOptions
from engines.tasks import Task
from engines.threads import ThreadTuner


def load_engine(
    spec: ModelSpec,
    *,
    served_name: str,
    max_num_seqs: int = EngineOptions.max_num_seqs,
    max_waiting: int = EngineOptions.max_waiting,
    kv_cache_memory_gb: float = EngineOptions.kv_cache_memory_gb,
    prefix_cache_memory_gb: float = EngineOptions.prefix_cache_memory_gb,
    encoder_batch_wait_ms: float = EngineOptions.encoder_batch_wait_ms,
    encoder_max_batch: int = EngineOptions.encoder_max_batch,
    cpu_threads: int | None = None,
    adaptive_threads: bool = EngineOptions.adaptive_cpu_threads,
) -> EngineFrontend:
    """Load the model, put the backend its task needs under the frontend (blocking: seconds)."""
    loaded = load_model(spec)
    if loaded.task is Task.text2text_generation:
        return EngineFrontend(HFSeq2SeqEngine(loaded, served_name=served_name, max_waiting=max_waiting))
    if loaded.task is not Task.text_generation:
        return EngineFrontend(HFEncoderEngine(
            loaded, served_name=served_name, batch_wait_ms=encoder_batch_wait_ms, max_batch=encoder_max_batch,
            max_waiting=max(max_waiting, encoder_max_batch) * 16,
        ))
    # On the CPU, the decoding steps choose their thread count as they go (engines.threads).
    on_cpu = next(loaded.model.parameters()).device.type == "cpu"
    tuner = ThreadTuner(cpu_threads) if cpu_threads and adaptive_threads and on_cpu else None
    engine = HFEngine(loaded, served_name=served_name, tuner=tuner)
    engine.limits.max_num_seqs = max_num_seqs
    engine.limits.max_waiting = max_waiting
    engine.limits.kv_cache_tokens = int(kv_cache_memory_gb * (1 << 30)) // engine.kv_bytes_per_token
    engine.limits.prefix_cache_tokens = int(prefix_cache_memory_gb * (1 << 30)) // engine.kv_bytes_per_token
    return EngineFrontend(engine)


__all__ = ["HFEncoderEngine", "HFEngine", "HFSeq2SeqEngine", "load_engine"]
