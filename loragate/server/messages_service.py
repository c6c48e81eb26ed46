"""Anthropic's Messages API on the chat machinery: a Messages request becomes a chat request (the
persona's template, tools and sampling defaults apply as on /v1/chat/completions); the engine's
output, read for tool calls as chat reads it, becomes anthropic-sdk-python's `Message`, or its
stream of events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.raw_message_delta_event import Delta
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from loragate.engine.protocol import Engine
from loragate.engine.tool_parsers import ForcedCalls, ParsedOutput, ToolCallDelta
from loragate.engine.types import ChoiceDelta, FinishReason
from loragate.server.anthropic_protocol import (
    MessageParam,
    MessagesRequest,
    TextBlockParam,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from loragate.server.chat_service import PreparedChat
from loragate.server.errors import BadRequestError, anthropic_envelope, served_error
from loragate.server.generation import ChoiceResult, generate_all, stream_updates
from loragate.server.protocol import ChatCompletionRequest
from loragate.server.tool_calls import CallReader
from loragate.validation_errors import first_problem

ChatDict = dict[str, Any]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


# -- Request: a Messages request as the chat request it is ------------------------------------


def conversation(request: MessagesRequest) -> list[ChatDict]:
    """The turns as chat messages: `system` leads (in place of the persona's system prompt),
    tool_use blocks are the assistant's tool_calls, tool_result blocks are tool messages."""
    system = request.system_text()
    messages: list[ChatDict] = [{"role": "system", "content": system}] if system else []
    for turn in request.messages:
        messages.extend(_turn(turn))
    return messages


def _turn(turn: MessageParam) -> list[ChatDict]:
    if isinstance(turn.content, str):
        return [{"role": turn.role, "content": turn.content}]
    blocks = turn.content
    texts = [{"type": "text", "text": b.text} for b in blocks if isinstance(b, TextBlockParam)]
    if turn.role == "assistant":
        message: ChatDict = {"role": "assistant", "content": texts}
        calls = [_call(b) for b in blocks if isinstance(b, ToolUseBlockParam)]
        return [{**message, "tool_calls": calls} if calls else message]
    results = [_result(b) for b in blocks if isinstance(b, ToolResultBlockParam)]
    return [*results, {"role": "user", "content": texts}] if texts or not results else results


def _call(block: ToolUseBlockParam) -> ChatDict:
    arguments = json.dumps(block.input, ensure_ascii=False)
    return {"id": block.id, "type": "function",
            "function": {"name": block.name, "arguments": arguments}}  # fmt: skip


def _result(block: ToolResultBlockParam) -> ChatDict:
    # Chat templates have no place for a failed call: the model reads it in the text.
    text = f"Error: {block.text()}" if block.is_error else block.text()
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def chat_request(request: MessagesRequest) -> ChatCompletionRequest:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": conversation(request),
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "stop": request.stop_sequences,
        "tools": [
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.input_schema, "strict": t.strict}}
            for t in request.tools or []
        ] or None,
    }  # fmt: skip
    choice = request.tool_choice
    if choice is not None:
        openai_names = {"auto": "auto", "any": "required", "none": "none"}
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if isinstance(choice, ToolChoiceTool)
            else openai_names[choice.type]
        )
        if getattr(choice, "disable_parallel_tool_use", None):
            body["parallel_tool_calls"] = False
    if request.output_config and request.output_config.format:
        schema = request.output_config.format.schema_
        body["response_format"] = {"type": "json_schema", "json_schema": {"schema": schema}}
    try:
        return ChatCompletionRequest.model_validate(_without_none(body))
    except ValidationError as exc:  # a check of the chat route: name the Messages field
        problem = first_problem(exc.errors())
        param = problem.context.get("param") or problem.dotted()
        if param is None:
            raise BadRequestError(problem.message) from exc
        # Its message names the chat field (Anthropic's envelope has no `param`): rename it.
        ours = param.replace(".function.parameters", ".input_schema").replace(".function.", ".")
        message = problem.message.replace(f"'{param}'", f"'{ours}'")
        raise BadRequestError(message, param=ours) from exc


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in body.items() if v is not None}
    for tool in body.get("tools", []):
        tool["function"] = _without_none(tool["function"])
    return body


# -- Output: the engine's output as Anthropic's message ---------------------------------------


def stop_reason(
    finish: FinishReason | None, stop_sequence: str | None, called: bool
) -> tuple[StopReason, str | None]:
    """Anthropic's (stop_reason, stop_sequence): a cut by max_tokens first, then a tool call,
    then the stop string that ended the reply."""
    if finish == "length":
        return "max_tokens", None
    if called:
        return "tool_use", None
    if stop_sequence is not None:
        return "stop_sequence", stop_sequence
    return "end_turn", None


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def call_input(arguments: str) -> dict[str, object]:
    """A call's arguments as its `input`. Cut short by max_tokens: what was written of them, as
    the SDK reads a stream's partial JSON."""
    try:
        value = from_json(arguments, allow_partial=True)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _message(
    message_id: str,
    model: str,
    content: list[TextBlock | ToolUseBlock],
    usage: Usage,
    stop: tuple[StopReason | None, str | None] = (None, None),
) -> Message:
    return Message(
        id=message_id, type="message", role="assistant", model=model, content=list(content),
        stop_reason=stop[0], stop_sequence=stop[1], usage=usage,
    )  # fmt: skip


def _forced(chat: PreparedChat) -> bool:
    return chat.tools is not None and chat.tools.forced


def _forced_done(choices: list[ChoiceResult]) -> bool:
    # A forced call's JSON is whole: end there, as chat does (a small model otherwise writes
    # whitespace until max_tokens).
    return all(ForcedCalls.complete(choice.text) for choice in choices)


async def message(engine: Engine, chat: PreparedChat, model: str, message_id: str) -> Message:
    done = _forced_done if _forced(chat) else None
    result = await generate_all(engine, chat.prepared, message_id, done)
    (choice,) = result.choices
    reader = chat.reader(engine)
    parsed = reader.parse(choice.text) if reader else ParsedOutput(content=choice.text)
    content: list[TextBlock | ToolUseBlock] = []
    if parsed.content:
        content.append(TextBlock(type="text", text=parsed.content))
    for call in parsed.calls:
        content.append(
            ToolUseBlock(
                type="tool_use",
                id=tool_use_id(call.id),
                name=call.name,
                input=call_input(call.arguments),
            )
        )
    stop = stop_reason(choice.finish_reason, choice.stop_sequence, bool(parsed.calls))
    usage = Usage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens)
    return _message(message_id, model, content, usage, stop)


# -- Streaming: Anthropic's event sequence -----------------------------------------------------


class _Blocks:
    """The content blocks of a streamed message, numbered in order; one is open at a time."""

    def __init__(self, reader: CallReader | None):
        self.reader = reader
        self.count = 0
        self.open: str | None = None  # "text", or the call index of the open tool_use block
        self.call_blocks: dict[int, int] = {}  # the call's index -> its block's

    @property
    def called(self) -> bool:
        return bool(self.call_blocks)

    def on_delta(self, delta: ChoiceDelta) -> list[BaseModel]:
        text: str | None = delta.text
        pieces: list[ToolCallDelta] = []
        if self.reader is not None:
            text, pieces = self.reader.feed(delta.text, delta.token_ids) if text else (None, [])
            if delta.finish_reason is not None:
                pieces = [*pieces, *self.reader.finish()]
        events = self._text(text) if text else []
        for piece in pieces:
            events += self._call(piece)
        return events

    def _text(self, text: str) -> list[BaseModel]:
        events = []
        if self.open != "text":
            events += self._start(TextBlock(type="text", text=""), "text")
        delta = TextDelta(type="text_delta", text=text)
        events.append(RawContentBlockDeltaEvent(type="content_block_delta",
                                                index=self.count - 1, delta=delta))  # fmt: skip
        return events

    def _call(self, piece: ToolCallDelta) -> list[BaseModel]:
        events = []
        if piece.id is not None and piece.index not in self.call_blocks:
            block = ToolUseBlock(type="tool_use", id=tool_use_id(piece.id), name=piece.name or "",
                                 input={})  # fmt: skip
            events += self._start(block, str(piece.index))
            self.call_blocks[piece.index] = self.count - 1
        index = self.call_blocks.get(piece.index)
        if index is not None and piece.arguments:
            delta = InputJSONDelta(type="input_json_delta", partial_json=piece.arguments)
            events.append(RawContentBlockDeltaEvent(type="content_block_delta",
                                                    index=index, delta=delta))  # fmt: skip
        return events

    def _start(self, block: TextBlock | ToolUseBlock, kind: str) -> list[BaseModel]:
        events = self.close()
        events.append(RawContentBlockStartEvent(type="content_block_start", index=self.count,
                                                content_block=block))  # fmt: skip
        self.count += 1
        self.open = kind
        return events

    def close(self) -> list[BaseModel]:
        if self.open is None:
            return []
        self.open = None
        return [RawContentBlockStopEvent(type="content_block_stop", index=self.count - 1)]


async def message_events(
    engine: Engine, chat: PreparedChat, model: str, message_id: str
) -> AsyncIterator[BaseModel]:
    prepared = chat.prepared
    input_tokens, output_tokens = len(prepared.prompt_token_ids), 0
    start = _message(message_id, model, [], Usage(input_tokens=input_tokens, output_tokens=0))
    yield RawMessageStartEvent(type="message_start", message=start)
    blocks = _Blocks(chat.reader(engine))
    finish: FinishReason | None = None
    stop_sequence: str | None = None
    forced, text = _forced(chat), ""
    async for update in stream_updates(engine, prepared, message_id):
        for delta in update.choices:
            output_tokens += len(delta.token_ids)
            text += delta.text
            if delta.finish_reason is not None:
                finish, stop_sequence = delta.finish_reason, delta.stop_sequence
            for event in blocks.on_delta(delta):
                yield event
        if forced and ForcedCalls.complete(text):
            break  # the engine request is aborted as the loop ends
    for event in blocks.close():
        yield event
    reason, sequence = stop_reason(finish, stop_sequence, blocks.called)
    yield RawMessageDeltaEvent(
        type="message_delta",
        delta=Delta(stop_reason=reason, stop_sequence=sequence),
        usage=MessageDeltaUsage(input_tokens=input_tokens, output_tokens=output_tokens),
    )
    yield RawMessageStopEvent(type="message_stop")


async def anthropic_sse(events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    """Anthropic's SSE: an `event:` line naming each event's type; an error is an `error` event
    in Anthropic's envelope, on which the SDK raises. No [DONE]: Anthropic sends none."""
    try:
        async for event in events:
            kind = getattr(event, "type", "")
            yield f"event: {kind}\ndata: {event.model_dump_json(exclude_unset=True)}\n\n"
    except Exception as exc:
        yield f"event: error\ndata: {json.dumps(anthropic_envelope(served_error(exc)))}\n\n"
