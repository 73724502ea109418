"""GET /models and /models/{id}: the served model, with `root`, context length and defaults."""

from __future__ import annotations

from typing import Any

from gateway.openai.errors import model_not_found
from gateway.openai.services.common import ServiceBase


class ModelService(ServiceBase):
    def __init__(self, *args: Any, created: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._created = created

    def card(self) -> dict[str, Any]:
        caps = self.engine.capabilities
        return {
            "id": self.config.served_name,
            "object": "model",
            "created": self._created,
            "owned_by": "hf-gateway",
            "root": caps.root,
            "parent": None,
            "max_model_len": caps.max_model_len,
            "engine": caps.engine,
            "dtype": caps.dtype,
            "tasks": sorted(t.value for t in caps.tasks),
            "sampling_defaults": self.config.defaults.as_dict(),
        }

    def adapter_card(self, name: str) -> dict[str, Any]:
        """A LoRA adapter: its own id, with the base model as `parent` (vLLM's shape)."""
        return {**self.card(), "id": name, "root": name, "parent": self.config.served_name}

    def list(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.card(), *(self.adapter_card(a) for a in self.adapters)]}

    def retrieve(self, model_id: str) -> dict[str, Any]:
        if model_id in self.adapters:
            return self.adapter_card(model_id)
        if model_id != self.config.served_name:
            raise model_not_found(model_id, (self.config.served_name, *self.adapters))
        return self.card()
