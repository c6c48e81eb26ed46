"""vLLM's tool-call parsers and forced-call schemas, behind neutral types.

`auto` tool choice reads the model's own call syntax with one of vLLM's parsers (`llama3_json`
for Llama-3.1, `hermes` for the ChatML tool template loragate ships for templates without
tools). `required` and a named function are not parsed from free text: vLLM's structured output
forces the JSON that `forced_call_schema` describes, and `ForcedCalls` reads it back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

AUTO_PARSER = "auto"
# Llama-3.1 marks a tool call with this special token (and JSON); models without it get the
# hermes format of loragate's ChatML tool template.
LLAMA3_TOOL_TOKEN = "<|python_tag|>"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class ToolCallDelta:
    """A streamed piece of call `index`: its id and name come first, then argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parser_names() -> list[str]:
    from vllm.tool_parsers import ToolParserManager

    return sorted(ToolParserManager.list_registered())


def default_parser(tokenizer: Any) -> str:
    """The parser for the served model's family."""
    vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return "llama3_json" if LLAMA3_TOOL_TOKEN in vocabulary else "hermes"


def _vllm_request(tools: Sequence[dict[str, Any]], tool_choice: Any) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {
            "model": "loragate",
            "messages": [{"role": "user", "content": ""}],
            "tools": list(tools),
            "tool_choice": tool_choice,
        }
    )


def forced_call_schema(
    tools: Sequence[dict[str, Any]], tool_choice: Any, parallel: bool | None
) -> dict[str, Any] | None:
    """The JSON schema structured output must force for `required` or a named function (vLLM's
    own): an array of {name, parameters} for `required`, the function's parameters when named."""
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    request = _vllm_request(tools, tool_choice)
    schema = get_json_schema_from_tools(request.tool_choice, request.tools, parallel)
    if isinstance(schema, str):
        schema = json.loads(schema)
    if schema is None or schema.get("type") != "array":
        return schema
    # vLLM's array leaves each call object open: a small model then adds keys until max_tokens.
    for branch in schema.get("items", {}).get("anyOf", []):
        branch.setdefault("additionalProperties", False)
    if parallel is False:  # one call: the object alone (maxItems alone did not end the array)
        single: dict[str, Any] = schema["items"]
        return single
    return schema


class AutoCalls:
    """The model's own calls in its output, read by one of vLLM's parsers."""

    def __init__(
        self, parser: str, tokenizer: Any, tools: Sequence[dict[str, Any]], tool_choice: Any
    ):
        from vllm.tool_parsers import ToolParserManager

        self._request = _vllm_request(tools, tool_choice)
        self._parser = ToolParserManager.get_tool_parser(parser)(tokenizer, self._request.tools)
        self._text = ""
        self._ids: list[int] = []
        self._ids_by_index: dict[int, str] = {}

    def parse(self, text: str) -> ParsedOutput:
        found = self._parser.extract_tool_calls(text, self._request)
        if not found.tools_called:
            return ParsedOutput(content=text)
        calls = [
            ToolCall(new_call_id(), call.function.name, call.function.arguments)
            for call in found.tool_calls
        ]
        return ParsedOutput(content=found.content or None, calls=calls)

    def feed(self, text: str, token_ids: Sequence[int]) -> tuple[str | None, list[ToolCallDelta]]:
        """One streamed step: (content to show, call pieces)."""
        previous_text, previous_ids = self._text, list(self._ids)
        self._text += text
        self._ids.extend(token_ids)
        delta = self._parser.extract_tool_calls_streaming(
            previous_text, self._text, text, previous_ids, self._ids, list(token_ids),
            self._request,
        )  # fmt: skip
        if delta is None:
            return None, []
        pieces = []
        for call in delta.tool_calls or []:
            function = call.function
            if call.index not in self._ids_by_index:
                self._ids_by_index[call.index] = new_call_id()
                call_id: str | None = self._ids_by_index[call.index]
            else:
                call_id = None
            name = function.name if function is not None else None
            arguments = (function.arguments or "") if function is not None else ""
            pieces.append(ToolCallDelta(call.index, call_id, name, arguments))
        return delta.content or None, pieces

    def finish(self) -> list[ToolCallDelta]:
        """The last call's arguments the parser read but had not streamed yet."""
        rest = self._parser.get_remaining_unstreamed_args()
        index = len(self._parser.prev_tool_call_arr) - 1
        return [ToolCallDelta(index, arguments=rest)] if rest and index >= 0 else []


class ForcedCalls:
    """Calls whose JSON structured output forced: one named function's arguments, or the
    `required` array of {name, parameters}."""

    def __init__(self, named: str | None, single: bool = False):
        """`single`: `required` without parallel calls, one {name, parameters} object."""
        self._named = named
        self._single = single
        self._text = ""
        self._sent = 0  # calls of the array streamed so far
        self._id: str | None = None

    def parse(self, text: str) -> ParsedOutput:
        if self._named is not None:
            return ParsedOutput(None, [ToolCall(new_call_id(), self._named, text)])
        # Whole, or cut short by max_tokens: the calls completed before the cut.
        self._text, self._sent = text, 0
        calls = [
            ToolCall(new_call_id(), item["name"], _json(item["parameters"]))
            for _, item in self._complete_items()
        ]
        return ParsedOutput(None if calls else text, calls)

    def feed(self, text: str, _: Sequence[int]) -> tuple[str | None, list[ToolCallDelta]]:
        if self._named is not None:
            if self._id is None:
                self._id = new_call_id()
                return None, [ToolCallDelta(0, self._id, self._named, text)]
            return None, [ToolCallDelta(0, arguments=text)] if text else []
        self._text += text
        return None, [
            ToolCallDelta(index, new_call_id(), item["name"], _json(item["parameters"]))
            for index, item in self._complete_items()
        ]

    def finish(self) -> list[ToolCallDelta]:
        return []

    @staticmethod
    def complete(text: str) -> bool:
        """Whether the forced JSON value is whole: what follows it can only be whitespace,
        which a small model may write until max_tokens."""
        stripped = text.lstrip()
        try:
            _, end = json.JSONDecoder().raw_decode(stripped)
        except ValueError:
            return False
        return not stripped[end:].strip()

    def _complete_items(self) -> list[tuple[int, dict[str, Any]]]:
        """Array elements completed since the last call: each is streamed whole."""
        decoder = json.JSONDecoder()
        opening = "{" if self._single else "["
        found, position, index = [], self._text.find(opening), 0
        if position < 0:
            return []
        position += 0 if self._single else 1
        while index == 0 or not self._single:
            while position < len(self._text) and self._text[position] in " \t\r\n,":
                position += 1
            try:
                item, position = decoder.raw_decode(self._text, position)
            except ValueError:
                break
            if index >= self._sent:
                found.append((index, item))
            index += 1
        self._sent = index
        return found


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
