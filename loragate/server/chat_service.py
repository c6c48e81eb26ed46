"""Chat completions: messages to prompt tokens, engine output to openai-python's types."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob

from loragate.adapters.targets import ModelTarget, SamplingDefaults
from loragate.engine.protocol import Engine
from loragate.engine.types import ChoiceDelta as EngineDelta
from loragate.engine.types import TokenLogprob
from loragate.prompting import Message, render_prompt_ids
from loragate.server.generation import (
    NO_USAGE,
    Prepared,
    UsageMode,
    generate_all,
    prepare,
    stream_updates,
    usage,
)
from loragate.server.protocol import ChatCompletionRequest
from loragate.server.sampling import check_messages_fit, completion_budget, sampling_options


def conversation(request: ChatCompletionRequest, target: ModelTarget) -> list[Message]:
    """The request's messages; the persona's system prompt leads only when the request has none."""
    messages: list[Message] = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in request.messages
    ]
    has_system = any(m["role"] == "system" for m in messages)
    if target.system_prompt and not has_system:
        messages.insert(0, {"role": "system", "content": target.system_prompt})
    return messages


def prepare_chat(
    engine: Engine,
    target: ModelTarget,
    request: ChatCompletionRequest,
    model_defaults: SamplingDefaults,
) -> Prepared:
    messages = conversation(request, target)
    check_messages_fit(engine, messages, "messages")
    prompt_ids = render_prompt_ids(engine.tokenizer, messages)
    defaults = target.defaults.over(model_defaults)
    budget = completion_budget(
        request.token_budget(), defaults.max_tokens, len(prompt_ids), engine.max_model_len
    )
    top = (request.top_logprobs or 0) if request.logprobs else None
    options = sampling_options(request, defaults, max_tokens=budget, logprobs=top)
    return prepare(engine, prompt_ids, options, target.adapter)


def _token_logprobs(entries: list[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=e.token,
            logprob=e.logprob,
            bytes=list(e.token.encode()),
            top_logprobs=[
                TopLogprob(token=tok, logprob=lp, bytes=list(tok.encode())) for tok, lp in e.top
            ],
        )
        for e in entries
    ]


async def chat_completion(
    engine: Engine, prepared: Prepared, model_name: str, request_id: str
) -> ChatCompletion:
    result = await generate_all(engine, prepared, request_id)
    choices = [
        Choice(
            index=i,
            message=ChatCompletionMessage(role="assistant", content=c.text),
            finish_reason=c.finish_reason or "stop",
            logprobs=ChoiceLogprobs(content=_token_logprobs(c.logprobs))
            if c.logprobs is not None
            else None,
        )
        for i, c in enumerate(result.choices)
    ]
    return ChatCompletion(
        id=request_id,
        object="chat.completion",
        created=int(time.time()),
        model=model_name,
        choices=choices,
        usage=usage(result.prompt_tokens, result.completion_tokens),
    )


async def chat_stream(
    engine: Engine,
    prepared: Prepared,
    model_name: str,
    request_id: str,
    usage_mode: UsageMode = NO_USAGE,
) -> AsyncIterator[ChatCompletionChunk]:
    created = int(time.time())
    prompt_tokens = len(prepared.prompt_token_ids)
    completion_tokens = 0

    def chunk(choices: list[ChunkChoice], final: bool = False) -> ChatCompletionChunk:
        result = ChatCompletionChunk(
            id=request_id,
            object="chat.completion.chunk",
            created=created,
            model=model_name,
            choices=choices,
        )
        if usage_mode.include:  # then every chunk carries `usage`: null (or so far) but last
            so_far = final or usage_mode.continuous
            result.usage = usage(prompt_tokens, completion_tokens) if so_far else None
        return result

    role_sent = False
    async for update in stream_updates(engine, prepared, request_id):
        if not role_sent:  # with the first output, as vLLM does: peers time the first token
            role_sent = True
            yield chunk(_role_choices(prepared.options.n))
        choices = []
        for delta in update.choices:
            completion_tokens += len(delta.token_ids)
            if not (delta.text or delta.logprobs or delta.finish_reason):  # held-back bytes
                continue
            choices.append(_chunk_choice(delta))
        if choices:
            yield chunk(choices)
    if usage_mode.include:
        yield chunk([], final=True)


def _role_choices(n: int) -> list[ChunkChoice]:
    return [
        ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""), finish_reason=None)
        for i in range(n)
    ]


def _chunk_choice(delta: EngineDelta) -> ChunkChoice:
    logprobs = None
    if delta.logprobs is not None:
        logprobs = ChunkLogprobs(content=_token_logprobs(delta.logprobs))
    return ChunkChoice(
        index=delta.index,
        delta=ChoiceDelta(content=delta.text),
        finish_reason=delta.finish_reason,
        logprobs=logprobs,
    )
