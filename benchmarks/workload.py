"""The requests: fixed-length random-word prompts, fixed-length outputs, a model per request."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from benchmarks.plan import BASE, PERSONA_COUNTS

SYSTEM_PROMPT = "You are a helpful assistant."  # the tutorial's; sent to every server alike

# Common words that are one token each (with their leading space) in GPT-2-style vocabularies,
# so that a prompt's length is set by its word count and trimmed exactly with the tokenizer.
_WORD_LIST = (
    "the of and to in is was for on that with as by at from his her they this which had not are "
    "but have were one all their there been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then first any like "
    "now my such make over our even most made after also did many before must through back years "
    "where much your way well down should because each just those people how too little state "
    "good very world still own see men work long get here between both life being under never day "
    "same another know while last might great old year off come since against go came right used "
    "take three house city river water light music market garden story night road table paper"
)
_WORDS = tuple(_WORD_LIST.split())


class Encoder(Protocol):
    def encode(self, text: str, /, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], /) -> str: ...


def make_prompts(tokenizer: Encoder, count: int, tokens: int, seed: int) -> list[str]:
    """`count` distinct user messages of exactly `tokens` tokens (distinct: no shared prefix)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(tokens + 8)]
        ids = tokenizer.encode(" ".join(words), add_special_tokens=False)[:tokens]
        prompts.append(tokenizer.decode(ids).strip())
    return prompts


def persona_names(count: int) -> list[str]:
    return [f"bench-persona-{i}" for i in range(count)]


def cold_persona_names(count: int) -> list[str]:
    return [f"bench-cold-{i}" for i in range(count)]


def workload_models(workload: str, base_model: str) -> list[str]:
    """The models a workload cycles through: request i goes to models[i % len(models)]."""
    if workload == BASE:
        return [base_model]
    return persona_names(PERSONA_COUNTS[workload])


def chat_body(model: str, user: str, output_tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        "max_completion_tokens": output_tokens,
        "ignore_eos": True,  # vLLM's extension, honoured by all three servers: fixed lengths
        "temperature": 0.0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def level_bodies(
    models: Sequence[str], prompts: Sequence[str], output_tokens: int, stream: bool
) -> list[dict[str, Any]]:
    """Round-robin over the models: a uniform mix in which every batch holds each persona."""
    return [
        chat_body(models[i % len(models)], prompt, output_tokens, stream)
        for i, prompt in enumerate(prompts)
    ]
