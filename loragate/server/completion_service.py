"""Text completions: one or several prompts, echo and logprobs, in openai-python's types."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from openai.types import Completion, CompletionChoice
from openai.types.completion_choice import Logprobs

from loragate.adapters.targets import ModelTarget, SamplingDefaults
from loragate.engine.protocol import Engine
from loragate.engine.types import GenerationUpdate, TokenLogprob
from loragate.server.errors import BadRequestError
from loragate.server.generation import (
    NO_USAGE,
    GenerationResult,
    Prepared,
    UsageMode,
    generate_all,
    merge,
    prepare,
    stream_updates,
    usage,
)
from loragate.server.protocol import CompletionRequest
from loragate.server.sampling import (
    check_prompt_chars,
    check_token_ids,
    completion_budget,
    completion_logprobs,
    sampling_options,
)


def prepare_completions(
    engine: Engine,
    target: ModelTarget,
    request: CompletionRequest,
    model_defaults: SamplingDefaults,
    max_sequences: int,
) -> list[Prepared]:
    prompts = request.prompts()
    if not prompts:
        raise BadRequestError("prompt must not be empty", param="prompt")
    if request.suffix:
        raise BadRequestError("suffix is not supported", param="suffix")
    if len(prompts) * request.n > max_sequences:
        raise BadRequestError(
            f"{len(prompts)} prompts times n={request.n} make {len(prompts) * request.n} "
            f"sequences; at most {max_sequences} are allowed per request",
            param="n" if request.n > 1 else "prompt",
        )
    defaults = target.defaults.over(model_defaults)
    logprobs, prompt_logprobs = completion_logprobs(request)
    prepared = []
    for prompt in prompts:
        ids = _prompt_ids(engine, prompt)
        budget = completion_budget(
            request.max_tokens, defaults.max_tokens, len(ids), engine.max_model_len
        )
        options = sampling_options(
            request, defaults, max_tokens=budget, logprobs=logprobs, prompt_logprobs=prompt_logprobs
        )
        prepared.append(prepare(engine, ids, options, target.adapter))
    return prepared


def _prompt_ids(engine: Engine, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        check_prompt_chars(engine, len(prompt), "prompt")
        return engine.tokenizer.encode(prompt)
    check_token_ids(prompt, engine.vocab_size, "prompt")
    return list(prompt)


def _logprobs(entries: list[TokenLogprob | None], fallback_tokens: list[str]) -> Logprobs:
    """OpenAI's legacy logprobs; an entry without logprobs (the first prompt token) is null.
    Each position's top_logprobs holds the chosen token too, as OpenAI's and vLLM's do (so
    logprobs=0 still names it)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    offset = 0
    for i, entry in enumerate(entries):
        token = entry.token if entry else fallback_tokens[i]
        tokens.append(token)
        token_logprobs.append(entry.logprob if entry else None)
        top.append({**dict(entry.top), entry.token: entry.logprob} if entry else None)
        offsets.append(offset)
        offset += len(token)
    # model_construct: OpenAI sends null for the first echoed token, which the SDK type omits.
    return Logprobs.model_construct(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top, text_offset=offsets
    )


def _first_token_text(engine: Engine, prepared: Prepared) -> str:
    """The first prompt token has no logprob, so no text from the engine: decode it here."""
    return engine.tokenizer.decode(prepared.prompt_token_ids[:1])


def _echo_prefix(engine: Engine, prepared: Prepared, echo: bool) -> str:
    return engine.tokenizer.decode(prepared.prompt_token_ids) if echo else ""


def _choices(
    engine: Engine, prompt_index: int, prepared: Prepared, result: GenerationResult, echo: bool
) -> list[CompletionChoice]:
    prefix = _echo_prefix(engine, prepared, echo)
    choices = []
    for i, choice in enumerate(result.choices):
        logprobs = None
        if choice.logprobs is not None:
            entries: list[TokenLogprob | None] = list(choice.logprobs)
            fallback = [""] * len(entries)
            if echo:
                prompt_entries = list(result.prompt_logprobs or [])
                entries = prompt_entries + entries
                fallback = [_first_token_text(engine, prepared)] + [""] * len(entries)
            logprobs = _logprobs(entries, fallback)
        choices.append(
            CompletionChoice(
                index=prompt_index * prepared.options.n + i,
                text=prefix + choice.text,
                finish_reason=choice.finish_reason or "stop",
                logprobs=logprobs,
            )
        )
    return choices


async def completion(
    engine: Engine, prepared: list[Prepared], model_name: str, request_id: str, echo: bool
) -> Completion:
    results = await asyncio.gather(
        *(generate_all(engine, p, f"{request_id}-{i}") for i, p in enumerate(prepared))
    )
    choices = [
        choice
        for i, (p, r) in enumerate(zip(prepared, results, strict=True))
        for choice in _choices(engine, i, p, r, echo)
    ]
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(r.completion_tokens for r in results)
    return Completion(
        id=request_id,
        object="text_completion",
        created=int(time.time()),
        model=model_name,
        choices=choices,
        usage=usage(prompt_tokens, completion_tokens),
    )


async def _tagged(
    index: int, updates: AsyncIterator[GenerationUpdate]
) -> AsyncIterator[tuple[int, GenerationUpdate]]:
    async for update in updates:
        yield index, update


async def completion_stream(
    engine: Engine,
    prepared: list[Prepared],
    model_name: str,
    request_id: str,
    echo: bool,
    usage_mode: UsageMode = NO_USAGE,
) -> AsyncIterator[Completion]:
    created = int(time.time())
    prompt_tokens = sum(len(p.prompt_token_ids) for p in prepared)
    streams = [
        _tagged(i, stream_updates(engine, p, f"{request_id}-{i}")) for i, p in enumerate(prepared)
    ]
    echoed: set[int] = set()
    completion_tokens = 0
    async for prompt_index, update in merge(streams):
        p = prepared[prompt_index]
        choices = []
        for delta in update.choices:
            completion_tokens += len(delta.token_ids)
            index = prompt_index * p.options.n + delta.index
            text = delta.text
            if echo and index not in echoed:
                echoed.add(index)
                text = _echo_prefix(engine, p, echo) + text
            logprobs = None
            if delta.logprobs is not None:
                logprobs = _logprobs(list(delta.logprobs), [""] * len(delta.logprobs))
            # model_construct: mid-stream chunks carry finish_reason null, which the SDK type
            # (made for whole responses) does not admit.
            choices.append(
                CompletionChoice.model_construct(
                    index=index, text=text, finish_reason=delta.finish_reason, logprobs=logprobs
                )
            )
        if choices:
            chunk = Completion(
                id=request_id,
                object="text_completion",
                created=created,
                model=model_name,
                choices=choices,
            )
            if usage_mode.include:  # null on every chunk but the last, or so far (vLLM's)
                continuous = usage_mode.continuous
                chunk.usage = usage(prompt_tokens, completion_tokens) if continuous else None
            yield chunk
    if usage_mode.include:
        yield Completion(
            id=request_id,
            object="text_completion",
            created=created,
            model=model_name,
            choices=[],
            usage=usage(prompt_tokens, completion_tokens),
        )
