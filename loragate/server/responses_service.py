"""The Responses API on the chat machinery: input items become a chat request (the persona's
template, tools and sampling defaults apply as on /v1/chat/completions); the chat output
becomes openai-python's `Response`, or its stream of semantic events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response
from pydantic import BaseModel, ValidationError

from loragate.server.errors import BadRequestError, as_gateway_error
from loragate.server.protocol import ChatCompletionRequest
from loragate.server.responses_protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    JsonSchemaFormat,
    MessageItem,
    NamedFunctionChoice,
    ResponsesRequest,
)
from loragate.validation_errors import first_problem

ChatDict = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- Request: input items to chat messages ---------------------------------------------------


def input_messages(request: ResponsesRequest) -> list[ChatDict]:
    """The request's input as chat messages (consecutive function calls in one assistant turn)."""
    if isinstance(request.input, str):
        return [{"role": "user", "content": request.input}]
    messages: list[ChatDict] = []
    for item in request.input:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def chat_request(request: ResponsesRequest, conversation: list[ChatDict]) -> ChatCompletionRequest:
    """The chat request this response is: `instructions` lead as its system message."""
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [*system, *conversation],
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "user": request.user,
    }
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
            for t in request.tools
        ]
    if isinstance(request.tool_choice, NamedFunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name}}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    fmt = request.text.format if request.text else None
    if isinstance(fmt, JsonSchemaFormat):
        schema = {"name": fmt.name, "schema": fmt.schema_}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in body.items() if v is not None}
        )
    except ValidationError as exc:  # a check of the chat route: name the Responses field
        problem = first_problem(exc.errors())
        param = problem.context.get("param") or problem.dotted()
        param = _responses_param(param)
        raise BadRequestError(problem.message, param=param, code="invalid_value") from exc


def _responses_param(param: str | None) -> str | None:
    if param is None:
        return None
    renamed = param.replace(".function.", ".").replace("max_completion_tokens", "max_output_tokens")
    return renamed.replace("messages", "input", 1) if renamed.startswith("messages") else renamed


# -- Output: chat results to Response ---------------------------------------------------------


@dataclass
class Call:
    item_id: str
    call_id: str
    name: str
    arguments: str = ""


@dataclass
class Output:
    """What one response produced, as the stream learns it and as the whole result holds it."""

    message_id: str = field(default_factory=lambda: new_id("msg"))
    text: str | None = None
    calls: list[Call] = field(default_factory=list)
    finish: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def of(cls, completion: ChatCompletion) -> Output:
        choice = completion.choices[0]
        calls = [
            Call(new_id("fc"), call.id, call.function.name, call.function.arguments)
            for call in choice.message.tool_calls or []
            if call.type == "function"
        ]
        usage = completion.usage
        return cls(
            text=choice.message.content,
            calls=calls,
            finish=choice.finish_reason,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        )

    def items(self, status: str = "completed") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if self.text:
            items.append(self.message_item(status))
        items.extend(self.call_item(call, status) for call in self.calls)
        return items

    def message_item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [{"type": "output_text", "text": self.text or "", "annotations": []}],
        }

    @staticmethod
    def call_item(call: Call, status: str) -> dict[str, Any]:
        return {
            "id": call.item_id,
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
            "status": status,
        }

    def as_messages(self) -> list[ChatDict]:
        """This output as the assistant turn that a later response continues from."""
        message: ChatDict = {"role": "assistant", "content": self.text}
        if self.calls:
            message["tool_calls"] = [
                {"id": c.call_id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls
            ]  # fmt: skip
        return [message]


def response_body(
    request: ResponsesRequest,
    response_id: str,
    model: str,
    created: float,
    output: Output | None,
) -> dict[str, Any]:
    """The Response object; `output` None: it has just been created, nothing produced yet."""
    incomplete = output is not None and output.finish == "length"
    status = "in_progress" if output is None else "incomplete" if incomplete else "completed"
    tool_choice: Any = request.tool_choice or ("auto" if request.tools else "none")
    if isinstance(tool_choice, NamedFunctionChoice):
        tool_choice = tool_choice.model_dump()
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": status,
        "output": output.items() if output else [],
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": tool_choice,
        "tools": [
            {"strict": False, "parameters": None, **t.model_dump(exclude_none=True)}
            for t in request.tools or []
        ],
        "text": {"format": request.text.format.model_dump(by_alias=True, exclude_none=True)}
        if request.text and request.text.format
        else {"format": {"type": "text"}},
        "truncation": "disabled",
        "error": None,
        "metadata": request.metadata or {},
        "usage": None,
    }
    if output is not None:
        body["usage"] = {
            "input_tokens": output.input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": output.input_tokens + output.output_tokens,
        }
    return body


def as_response(body: dict[str, Any]) -> Response:
    return Response.model_validate(body)


# -- Streaming: chat chunks to the Responses events -------------------------------------------


class _Event(BaseModel):
    """One server-sent event: its type is also the SSE `event:` line."""

    type: str
    body: dict[str, Any]


class EventStream:
    """Numbers the events in order (`sequence_number`) as the chat chunks arrive."""

    def __init__(self, request: ResponsesRequest, response_id: str, model: str):
        self.request, self.response_id, self.model = request, response_id, model
        self.created = time.time()
        self.output = Output()
        self._sequence = 0
        self._text_index: int | None = None
        self._call_index: dict[int, int] = {}  # the chat stream's call index -> output index
        self._items = 0

    def event(self, kind: str, **fields: Any) -> _Event:
        body = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return _Event(type=kind, body=body)

    def opening(self) -> list[_Event]:
        skeleton = response_body(self.request, self.response_id, self.model, self.created, None)
        return [
            self.event("response.created", response=skeleton),
            self.event("response.in_progress", response=skeleton),
        ]

    def on_chunk(self, chunk: ChatCompletionChunk) -> list[_Event]:
        if chunk.usage is not None:
            self.output.input_tokens = chunk.usage.prompt_tokens
            self.output.output_tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        self.output.finish = choice.finish_reason or self.output.finish
        events = self._on_text(choice.delta.content) if choice.delta.content else []
        for piece in choice.delta.tool_calls or []:
            events += self._on_call_piece(piece.index, piece.id, piece.function)
        return events

    def _on_text(self, text: str) -> list[_Event]:
        events = []
        if self._text_index is None:
            self._text_index = self._next_item()
            self.output.text = ""
            item = self.output.message_item("in_progress")
            item["content"] = []
            events.append(self.event("response.output_item.added",
                                     output_index=self._text_index, item=item))  # fmt: skip
            events.append(self._part_event("response.content_part.added", ""))
        self.output.text = (self.output.text or "") + text
        events.append(self.event("response.output_text.delta", item_id=self.output.message_id,
                                 output_index=self._text_index, content_index=0, delta=text,
                                 logprobs=[]))  # fmt: skip
        return events

    def _part_event(self, kind: str, text: str) -> _Event:
        part = {"type": "output_text", "text": text, "annotations": []}
        return self.event(kind, item_id=self.output.message_id, output_index=self._text_index,
                          content_index=0, part=part)  # fmt: skip

    def _on_call_piece(self, index: int, call_id: str | None, function: Any) -> list[_Event]:
        events = []
        if index not in self._call_index:
            self._call_index[index] = self._next_item()
            name = function.name if function is not None and function.name else ""
            call = Call(new_id("fc"), call_id or new_id("call"), name)
            self.output.calls.append(call)
            events.append(self.event("response.output_item.added",
                                     output_index=self._call_index[index],
                                     item=Output.call_item(call, "in_progress")))  # fmt: skip
        call = self.output.calls[list(self._call_index).index(index)]
        arguments = function.arguments if function is not None and function.arguments else ""
        if arguments:
            call.arguments += arguments
            events.append(self.event("response.function_call_arguments.delta",
                                     item_id=call.item_id, output_index=self._call_index[index],
                                     delta=arguments))  # fmt: skip
        return events

    def _next_item(self) -> int:
        self._items += 1
        return self._items - 1

    def closing(self) -> list[_Event]:
        events = []
        if self._text_index is not None:
            text = self.output.text or ""
            events.append(self.event("response.output_text.done", item_id=self.output.message_id,
                                     output_index=self._text_index, content_index=0, text=text,
                                     logprobs=[]))  # fmt: skip
            events.append(self._part_event("response.content_part.done", text))
            events.append(self.event("response.output_item.done", output_index=self._text_index,
                                     item=self.output.message_item("completed")))  # fmt: skip
        for index, call in zip(self._call_index.values(), self.output.calls, strict=True):
            events.append(self.event("response.function_call_arguments.done",
                                     item_id=call.item_id, output_index=index,
                                     name=call.name, arguments=call.arguments))  # fmt: skip
            events.append(self.event("response.output_item.done", output_index=index,
                                     item=Output.call_item(call, "completed")))  # fmt: skip
        body = self.final_body()
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        events.append(self.event(kind, response=body))
        return events

    def final_body(self) -> dict[str, Any]:
        return response_body(self.request, self.response_id, self.model, self.created, self.output)

    def failure(self, exc: Exception) -> _Event:
        error = as_gateway_error(exc)
        message = error.message if error else "Internal server error"
        return self.event("error", code=error.code if error else None, message=message,
                          param=error.param if error else None)  # fmt: skip


async def sse_of(events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    """The Responses API's SSE: an `event:` line per event, and no [DONE] (OpenAI sends none)."""
    async for event in events:
        assert isinstance(event, _Event)
        yield f"event: {event.type}\ndata: {json.dumps(event.body)}\n\n"
