"""Tools on /v1/messages over a scripted engine with Llama-3.1's tokenizer, through the anthropic
SDK: the tools rendered by Llama-3.1's template, `tool_use` blocks read back by vLLM's
`llama3_json` parser (or forced by structured output), and `tool_result` turns in the prompt."""

from __future__ import annotations

import datetime
import json
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, TextBlock, ToolParam, ToolUseBlock
from fastapi.testclient import TestClient

from loragate.engine.fake import FakeEngine
from tests import llama31
from tests.unit.conftest import BASE

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

TODAY = datetime.date(2026, 12, 2)
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
TOOLS: list[ToolParam] = [
    {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER},
    {"name": "get_time", "input_schema": {"type": "object"}},
]
QUESTION: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
CALL = ['{"name": "get_weather", ', '"parameters": {"city": "Paris"}}']


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr("loragate.prompting.today", lambda: TODAY)
    return llama31.Llama31Engine(llama31.shared_tokenizer())


@pytest.fixture
def claude(client: TestClient) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url="http://testserver", api_key="x", http_client=client, max_retries=0
    )


def ask(claude: anthropic.Anthropic, **fields: Any) -> anthropic.types.Message:
    fields = {"max_tokens": 64, "messages": QUESTION, "tools": TOOLS, **fields}
    reply: anthropic.types.Message = claude.messages.create(model=BASE, **fields)
    return reply


def tool_uses(message: anthropic.types.Message) -> list[ToolUseBlock]:
    return [block for block in message.content if isinstance(block, ToolUseBlock)]


def test_auto_reads_a_llama31_call_as_a_tool_use_block(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(CALL)
    reply = ask(claude)
    assert reply.stop_reason == "tool_use"
    (call,) = reply.content
    assert isinstance(call, ToolUseBlock)
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    assert call.id.startswith("toolu_")
    ((prompt, options, _),) = fake.requests
    assert options.json_schema is None  # auto: the model's own choice
    text = fake.tokenizer.decode(prompt)
    assert "Environment: ipython" in text and '"name": "get_weather"' in text
    assert '"description": "The weather in a city."' in text


def test_a_plain_answer_stays_text(claude: anthropic.Anthropic, fake: FakeEngine) -> None:
    fake.enqueue(["It is ", "sunny."])
    reply = ask(claude)
    assert reply.stop_reason == "end_turn"
    assert [b.text for b in reply.content if isinstance(b, TextBlock)] == ["It is sunny."]


def test_a_streamed_call_is_a_tool_use_block_with_json_deltas(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    pieces = ['{"name": "get_weather", ', '"parameters": ', '{"city": ', '"Paris", "unit": "C"}}']
    fake.enqueue(pieces)
    events = list(
        claude.messages.create(
            model=BASE, max_tokens=64, messages=QUESTION, tools=TOOLS, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    (start,) = [e for e in events if e.type == "content_block_start"]
    assert start.content_block.type == "tool_use" and start.content_block.name == "get_weather"
    assert start.content_block.input == {}
    partial = "".join(
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    )
    assert json.loads(partial) == {"city": "Paris", "unit": "C"}
    (stop,) = [e for e in events if e.type == "message_delta"]
    assert stop.delta.stop_reason == "tool_use"
    fake.enqueue(pieces)
    with claude.messages.stream(
        model=BASE, max_tokens=64, messages=QUESTION, tools=TOOLS
    ) as stream:
        final = stream.get_final_message()
    (call,) = tool_uses(final)
    assert call.input == {"city": "Paris", "unit": "C"} and final.stop_reason == "tool_use"


def test_a_named_tool_is_forced_by_its_schema(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(['{"city": ', '"Paris"}'])
    reply = ask(claude, tool_choice={"type": "tool", "name": "get_weather"})
    ((_, options, _),) = fake.requests
    assert options.json_schema == WEATHER  # the engine may only write the arguments
    (call,) = tool_uses(reply)
    assert (call.name, call.input, reply.stop_reason) == ("get_weather", {"city": "Paris"},
                                                          "tool_use")  # fmt: skip
    fake.enqueue(['{"city": ', '"Paris"}'])
    with claude.messages.stream(
        model=BASE, max_tokens=64, messages=QUESTION, tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:  # fmt: skip
        (streamed,) = tool_uses(stream.get_final_message())
    assert (streamed.name, streamed.input) == ("get_weather", {"city": "Paris"})


def test_any_forces_a_call_of_some_tool(claude: anthropic.Anthropic, fake: FakeEngine) -> None:
    fake.enqueue(['[{"name": "get_time", "parameters": {}}]'])
    reply = ask(claude, tool_choice={"type": "any"})
    schema = fake.requests[0][1].json_schema
    assert isinstance(schema, dict) and schema["type"] == "array"  # OpenAI's `required`
    assert [(c.name, c.input) for c in tool_uses(reply)] == [("get_time", {})]


def test_none_offers_the_tools_but_reads_no_call(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(CALL)
    reply = ask(claude, tool_choice={"type": "none"})
    assert tool_uses(reply) == [] and reply.stop_reason == "end_turn"


def test_a_call_cut_by_max_tokens_keeps_what_was_written(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    named: Any = {"type": "tool", "name": "get_weather"}
    output = ['{"city": ', '"Paris", "unit": ', '"C"}']
    fake.enqueue(output)
    reply = ask(claude, max_tokens=2, tool_choice=named)
    assert reply.stop_reason == "max_tokens"
    (call,) = tool_uses(reply)
    assert call.input == {"city": "Paris"}
    fake.enqueue(output)  # the SDK reads a stream's partial JSON the same way
    with claude.messages.stream(
        model=BASE, max_tokens=2, messages=QUESTION, tools=TOOLS, tool_choice=named
    ) as stream:
        final = stream.get_final_message()
    assert [c.input for c in tool_uses(final)] == [{"city": "Paris"}]
    assert final.stop_reason == "max_tokens"


def test_a_tool_result_round_trip_is_rendered_into_the_prompt(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    history: list[MessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "sunny, 21 C"}]},
        ]},
    ]  # fmt: skip
    fake.enqueue(["It is sunny."])
    reply = ask(claude, messages=history)
    assert [b.text for b in reply.content if isinstance(b, TextBlock)] == ["It is sunny."]
    text = fake.tokenizer.decode(fake.requests[0][0])
    assert text.endswith(
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\nsunny, 21 C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_a_failed_tool_result_says_so(claude: anthropic.Anthropic, fake: FakeEngine) -> None:
    history: list[MessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "X"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city",
             "is_error": True},
            {"type": "text", "text": "Try again?"},
        ]},
    ]  # fmt: skip
    ask(claude, messages=history)
    text = fake.tokenizer.decode(fake.requests[0][0])
    assert "ipython<|end_header_id|>\n\nError: no such city<|eot_id|>" in text
    assert text.endswith("user<|end_header_id|>\n\nTry again?<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools.1.name"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object", "properties": 5}}]},
         "tools.0.input_schema"),
        ({"tools": [{"name": "has space", "input_schema": {"type": "object"}}]}, "tools.0.name"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
        ({"tool_choice": {"type": "any"},
          "output_config": {"format": {"type": "json_schema", "schema": WEATHER}}},
         "tool_choice"),
    ],
)  # fmt: skip
def test_invalid_tools_are_400s_naming_the_field(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    body = {"model": BASE, "max_tokens": 8, "messages": QUESTION, "tools": TOOLS, **fields}
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"], error


def test_output_config_format_is_structured_output(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    fake.enqueue(['{"city": "Paris"}'])
    reply = claude.messages.create(
        model=BASE, max_tokens=16, messages=QUESTION,
        output_config={"format": {"type": "json_schema", "schema": WEATHER}},
    )  # fmt: skip
    assert fake.requests[0][1].json_schema == WEATHER
    assert [b.text for b in reply.content if isinstance(b, TextBlock)] == ['{"city": "Paris"}']


def test_a_forced_call_ends_when_its_json_is_whole(
    claude: anthropic.Anthropic, fake: FakeEngine
) -> None:
    named: Any = {"type": "tool", "name": "get_weather"}
    output = ['{"city": ', '"Paris"}', "\n", "\n", "\n"]  # then whitespace until max_tokens
    fake.enqueue(output)
    reply = ask(claude, max_tokens=5, tool_choice=named)
    assert reply.stop_reason == "tool_use" and reply.usage.output_tokens == 2
    fake.enqueue(output)
    events = list(
        claude.messages.create(
            model=BASE, max_tokens=5, messages=QUESTION, tools=TOOLS, tool_choice=named,
            stream=True,
        )
    )  # fmt: skip
    (stop,) = [e for e in events if e.type == "message_delta"]
    assert stop.delta.stop_reason == "tool_use" and stop.usage.output_tokens == 2
    assert len(fake.aborted) == 2  # the engine requests ended there
