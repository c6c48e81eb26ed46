"""What a request's `model` field resolves to: the base model, or a persona on top of it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from openai.types import Model

from loragate.engine.types import AdapterRef


@dataclass(frozen=True)
class SamplingDefaults:
    """Defaults applied where a request is silent (a persona's, or the model's own)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> SamplingDefaults:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def over(self, base: SamplingDefaults) -> SamplingDefaults:
        """These defaults, falling back to `base` where unset."""
        merged = {
            f.name: getattr(self, f.name)
            if getattr(self, f.name) is not None
            else getattr(base, f.name)
            for f in fields(self)
        }
        return SamplingDefaults(**merged)


@dataclass(frozen=True)
class ModelTarget:
    name: str
    version: str | None = None  # a persona's (None for the base model)
    adapter: AdapterRef | None = None
    system_prompt: str | None = None
    defaults: SamplingDefaults = SamplingDefaults()
    chat_template: str | None = None  # the persona's own, in place of the model's
    tool_parser: str | None = None
    max_parallel: int | None = None  # the persona's own cap, over all keys


def base_model_card(name: str, root: str, max_model_len: int, created: int) -> Model:
    # openai's Model allows extra fields; vLLM's cards carry these three.
    return Model.model_validate(
        dict(
            id=name,
            object="model",
            created=created,
            owned_by="loragate",
            root=root,
            parent=None,
            max_model_len=max_model_len,
        )
    )
