"""Chat completions: messages to prompt tokens, engine output to openai-python's types."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
)
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_message_tool_call import Function
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob

from loragate.adapters.targets import ModelTarget, SamplingDefaults
from loragate.engine.protocol import Engine
from loragate.engine.tool_parsers import ForcedCalls, ParsedOutput, ToolCallDelta
from loragate.engine.types import ChoiceDelta as EngineDelta
from loragate.engine.types import TokenLogprob
from loragate.prompting import Message, render_prompt_ids
from loragate.server.errors import BadRequestError
from loragate.server.generation import (
    NO_USAGE,
    ChoiceResult,
    Prepared,
    UsageMode,
    generate_all,
    prepare,
    stream_updates,
    usage,
)
from loragate.server.protocol import ChatCompletionRequest, ChatMessage
from loragate.server.sampling import check_messages_fit, completion_budget, sampling_options
from loragate.server.tool_calls import CallReader, ToolPlan, tool_plan


@dataclass(frozen=True)
class PreparedChat:
    prepared: Prepared
    tools: ToolPlan | None = None

    def reader(self, engine: Engine) -> CallReader | None:
        return self.tools.reader(engine.tokenizer) if self.tools else None


def _message(m: ChatMessage) -> Message:
    message: Message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    if m.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": _arguments(call.function.arguments),
                },
            }
            for call in m.tool_calls
        ]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message


def _arguments(text: str) -> Any:
    """Templates write a call's arguments with `tojson`: an object, not OpenAI's JSON string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def conversation(request: ChatCompletionRequest, target: ModelTarget) -> list[Message]:
    return conversation_of(request.messages, target)


def conversation_of(given: list[ChatMessage], target: ModelTarget) -> list[Message]:
    """The messages; the persona's system prompt leads only when they have none."""
    messages = [_message(m) for m in given]
    has_system = any(m["role"] == "system" for m in messages)
    if target.system_prompt and not has_system:
        messages.insert(0, {"role": "system", "content": target.system_prompt})
    return messages


def prepare_chat(
    engine: Engine,
    target: ModelTarget,
    request: ChatCompletionRequest,
    model_defaults: SamplingDefaults,
    tool_parser: str = "hermes",
) -> PreparedChat:
    messages = conversation(request, target)
    check_messages_fit(engine, messages, "messages")
    plan = tool_plan(request, target.tool_parser or tool_parser)
    try:
        prompt_ids = render_prompt_ids(
            engine.tokenizer,
            messages,
            tools=plan.tools if plan else None,
            chat_template=target.chat_template,
        )
    except ValueError as exc:  # a template that cannot render tools
        raise BadRequestError(
            f"Tools cannot be offered to this model: {exc}",
            param="tools",
            code="tools_not_supported",
        ) from exc
    defaults = target.defaults.over(model_defaults)
    budget = completion_budget(
        request.token_budget(), defaults.max_tokens, len(prompt_ids), engine.max_model_len
    )
    top = (request.top_logprobs or 0) if request.logprobs else None
    options = sampling_options(request, defaults, max_tokens=budget, logprobs=top)
    forced = plan.forced_schema() if plan else None
    if forced is not None:
        options = dataclasses.replace(
            options, json_schema=forced, json_object=False, compact_json=True
        )
    return PreparedChat(prepare(engine, prompt_ids, options, target.adapter), plan)


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
    engine: Engine, chat: PreparedChat, model_name: str, request_id: str
) -> ChatCompletion:
    forced = chat.tools is not None and chat.tools.forced
    result = await generate_all(
        engine, chat.prepared, request_id, _all_forced_done if forced else None
    )
    choices = []
    for i, c in enumerate(result.choices):
        reader = chat.reader(engine)
        parsed = reader.parse(c.text) if reader else ParsedOutput(content=c.text)
        finish = c.finish_reason or "stop"
        choices.append(
            Choice(
                index=i,
                message=ChatCompletionMessage(
                    role="assistant",
                    content=parsed.content,
                    tool_calls=[
                        ChatCompletionMessageToolCall(
                            id=call.id,
                            type="function",
                            function=Function(name=call.name, arguments=call.arguments),
                        )
                        for call in parsed.calls
                    ]
                    or None,
                ),
                finish_reason="tool_calls" if parsed.calls and finish == "stop" else finish,
                logprobs=ChoiceLogprobs(content=_token_logprobs(c.logprobs))
                if c.logprobs is not None
                else None,
            )
        )
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
    chat: PreparedChat,
    model_name: str,
    request_id: str,
    usage_mode: UsageMode = NO_USAGE,
) -> AsyncIterator[ChatCompletionChunk]:
    prepared = chat.prepared
    readers = [chat.reader(engine) for _ in range(prepared.options.n)]
    called = [False] * prepared.options.n
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
    forced = chat.tools is not None and chat.tools.forced
    texts = [""] * prepared.options.n
    async for update in stream_updates(engine, prepared, request_id):
        if not role_sent:  # with the first output, as vLLM does: peers time the first token
            role_sent = True
            yield chunk(_role_choices(prepared.options.n))
        choices = []
        for delta in update.choices:
            completion_tokens += len(delta.token_ids)
            if not (delta.text or delta.logprobs or delta.finish_reason):  # held-back bytes
                continue
            reader = readers[delta.index]
            if reader is None:
                choices.append(_chunk_choice(delta))
                continue
            content, pieces = reader.feed(delta.text, delta.token_ids) if delta.text else (None, [])
            if delta.finish_reason is not None:
                pieces = [*pieces, *reader.finish()]
            called[delta.index] = called[delta.index] or bool(pieces)
            choices.append(_chunk_choice(delta, content, pieces, called[delta.index]))
            texts[delta.index] += delta.text
        if forced and all(ForcedCalls.complete(text) for text in texts):
            # The calls are whole: end here rather than on max_tokens (the engine request is
            # aborted as the loop ends); every choice ends with this chunk, if it had not.
            for choice in choices:
                choice.finish_reason = choice.finish_reason or "tool_calls"
            present = {choice.index for choice in choices}
            choices += [_ended(i) for i in range(len(texts)) if i not in present]
            yield chunk(choices)
            break
        if choices:
            yield chunk(choices)
    if usage_mode.include:
        yield chunk([], final=True)


def _all_forced_done(choices: list[ChoiceResult]) -> bool:
    return all(ForcedCalls.complete(choice.text) for choice in choices)


def _ended(index: int) -> ChunkChoice:
    return ChunkChoice(index=index, delta=ChoiceDelta(), finish_reason="tool_calls")


def _role_choices(n: int) -> list[ChunkChoice]:
    return [
        ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""), finish_reason=None)
        for i in range(n)
    ]


def _chunk_choice(
    delta: EngineDelta,
    content: str | None = None,
    pieces: list[ToolCallDelta] | None = None,
    called: bool = False,
) -> ChunkChoice:
    """One choice's chunk: its text, or (with tools) the content and call pieces read from it."""
    logprobs = None
    if delta.logprobs is not None:
        logprobs = ChunkLogprobs(content=_token_logprobs(delta.logprobs))
    finish: Literal["stop", "length", "tool_calls"] | None = delta.finish_reason
    if pieces is None:
        choice_delta = ChoiceDelta(content=delta.text)
    else:
        choice_delta = ChoiceDelta(content=content, tool_calls=_delta_calls(pieces) or None)
        finish = "tool_calls" if called and finish == "stop" else finish
    return ChunkChoice(
        index=delta.index, delta=choice_delta, finish_reason=finish, logprobs=logprobs
    )


def _delta_calls(pieces: list[ToolCallDelta]) -> list[ChoiceDeltaToolCall]:
    return [
        ChoiceDeltaToolCall(
            index=piece.index,
            id=piece.id,
            type="function" if piece.id else None,
            function=ChoiceDeltaToolCallFunction(name=piece.name, arguments=piece.arguments),
        )
        for piece in pieces
    ]
