"""The transformers engine: generation on a scheduler thread, never on the event loop."""

from engines.hf.engine import HFEngine

__all__ = ["HFEngine"]
