"""Engine-neutral request and output types, so that the HTTP layer never imports vLLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter as the engine knows it: a unique integer id per loaded version."""

    name: str
    int_id: int
    path: str


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    json_schema: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    # JSON without free whitespace: a small model given the freedom may write newlines forever.
    compact_json: bool = False


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class ChoiceDelta:
    """New output of one choice since the previous update."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None  # the stop string that ended it, if one did


@dataclass
class GenerationUpdate:
    prompt_token_ids: list[int]
    choices: list[ChoiceDelta] = field(default_factory=list)
    # Only on the first update, when asked for: one entry per prompt token (None for the first).
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finished: bool = False
    # Seconds the request waited in the engine's queue before it was first scheduled, once the
    # engine knows it (vLLM's request stats); None from engines that do not say.
    queue_time_s: float | None = None
