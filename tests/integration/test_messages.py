"""Anthropic's Messages API on the real engine, through the official anthropic SDK: a reply
whole and streamed (the stream assembles into the same greedy message), a forced tool call whose
`input` matches its schema, and its result sent back for a final answer.

The embedded SmolLM2-135M-Instruct has no tools in its template: loragate's ChatML tool template
renders them, and structured output forces the named tool's input.
"""

from __future__ import annotations

from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import Message, MessageParam, TextBlock, ToolParam, ToolUseBlock

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

pytestmark = pytest.mark.integration

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[ToolParam] = [
    {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "input_schema": WEATHER,
    }
]
QUESTION: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY: Any = {"temperature": 0}  # Anthropic's API has dropped it; vLLM's and ours take it


@pytest.fixture(scope="module")
def claude(gateway: Gateway) -> anthropic.Anthropic:
    # The SDK appends /v1/messages to the origin, and sends the key as x-api-key.
    return anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0, timeout=300)


def text_of(message: Message) -> str:
    return "".join(block.text for block in message.content if isinstance(block, TextBlock))


def test_a_message_whole_and_streamed(claude: anthropic.Anthropic) -> None:
    fields: Any = {"model": BASE_MODEL, "max_tokens": 12, "messages": QUESTION,
                   "system": "You answer in one short sentence.", "extra_body": GREEDY}  # fmt: skip
    reply = claude.messages.create(**fields)
    assert (reply.type, reply.role, reply.model) == ("message", "assistant", BASE_MODEL)
    assert text_of(reply) and reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens > 10 and 0 < reply.usage.output_tokens <= 12
    kinds = []
    with claude.messages.stream(**fields) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert text_of(final) == text_of(reply)  # greedy: the same message
    assert (final.stop_reason, final.usage.output_tokens) == (
        reply.stop_reason, reply.usage.output_tokens
    )  # fmt: skip
    assert final.usage.input_tokens == reply.usage.input_tokens


def test_a_stop_sequence_ends_the_reply_and_is_named(claude: anthropic.Anthropic) -> None:
    free = claude.messages.create(
        model=BASE_MODEL, max_tokens=12, messages=QUESTION, extra_body=GREEDY
    )
    words = text_of(free).split()
    assert len(words) >= 3, free
    stop = words[2]  # greedy: the same reply, cut before its third word
    reply = claude.messages.create(
        model=BASE_MODEL, max_tokens=12, messages=QUESTION, stop_sequences=[stop],
        extra_body=GREEDY,
    )  # fmt: skip
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", stop)
    assert stop not in text_of(reply)


def test_a_named_tool_is_called_with_valid_input_then_answered(
    claude: anthropic.Anthropic,
) -> None:
    named: Any = {"type": "tool", "name": "get_weather"}
    fields: Any = {"model": BASE_MODEL, "max_tokens": 60, "messages": QUESTION, "tools": TOOLS,
                   "tool_choice": named, "extra_body": GREEDY}  # fmt: skip
    reply = claude.messages.create(**fields)
    assert reply.stop_reason == "tool_use", reply
    (call,) = [block for block in reply.content if isinstance(block, ToolUseBlock)]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER)
    with claude.messages.stream(**fields) as stream:
        (streamed,) = [b for b in stream.get_final_message().content if isinstance(b, ToolUseBlock)]
    assert (streamed.name, streamed.input) == (call.name, call.input)  # greedy: the same call
    history: list[MessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": '{"temperature": 21, "sky": "clear"}'}]},
    ]  # fmt: skip
    final = claude.messages.create(
        model=BASE_MODEL, max_tokens=30, messages=history, tools=TOOLS,
        tool_choice={"type": "none"}, extra_body=GREEDY,
    )  # fmt: skip
    assert text_of(final) and final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > reply.usage.input_tokens
