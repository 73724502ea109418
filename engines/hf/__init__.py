"""The transformers engines: generation on a scheduler thread, encoders on a worker thread."""

from __future__ import annotations

from engines.hf.encoder import HFEncoderEngine
from engines.hf.engine import HFEngine
from engines.loader import ModelSpec, load_model
from engines.tasks import Task


def load_engine(spec: ModelSpec, *, served_name: str) -> HFEngine | HFEncoderEngine:
    """Load the model and wrap it in the engine its task needs (blocking: seconds)."""
    loaded = load_model(spec)
    if loaded.task is Task.text_generation:
        return HFEngine(loaded, served_name=served_name)
    return HFEncoderEngine(loaded, served_name=served_name)


__all__ = ["HFEncoderEngine", "HFEngine", "load_engine"]
