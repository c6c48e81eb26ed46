"""Tool calling on /v1/chat/completions over a scripted engine with Llama-3.1's tokenizer.

The engine is told what to emit; the gateway renders the tools with Llama-3.1's template, asks
for structured output on forced calls, and reads calls back with vLLM's `llama3_json` parser.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from loragate.engine.fake import FakeEngine
from tests import llama31

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

TODAY = datetime.date(2026, 12, 2)
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
QUESTION: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr("loragate.prompting.today", lambda: TODAY)
    return llama31.Llama31Engine(llama31.shared_tokenizer())


def ask(sdk: openai.OpenAI, **fields: Any) -> Any:
    return sdk.chat.completions.create(
        model="fake-base", messages=fields.pop("messages", QUESTION), tools=TOOLS, **fields
    )


def streamed_calls(sdk: openai.OpenAI, **fields: Any) -> tuple[list[dict[str, str]], str | None]:
    """The calls the stream's deltas assemble (the index, id and name come first), and the
    last finish reason."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in ask(sdk, stream=True, **fields):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or []:
                if piece.index not in calls:
                    assert piece.id and piece.function and piece.function.name
                    calls[piece.index] = {
                        "id": piece.id,
                        "name": piece.function.name,
                        "arguments": "",
                    }
                assert piece.function is not None
                calls[piece.index]["arguments"] += piece.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


def test_auto_reads_one_llama31_json_call(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(['{"name": "get_weather", ', '"parameters": {"city": "Paris"}}'])
    reply = ask(sdk)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name) == ("function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    ((_, options, _),) = fake.requests
    assert options.json_schema is None  # auto: the model's own choice, not constrained


def test_auto_reads_several_calls(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(['{"name": "get_weather", "parameters": {"city": "Paris"}}; ',
                  '{"name": "get_time", "parameters": {}}'])  # fmt: skip
    calls = ask(sdk).choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2


def test_auto_lets_a_plain_answer_through(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(["It is ", "sunny."])
    choice = ask(sdk).choices[0]
    assert (choice.message.content, choice.message.tool_calls) == ("It is sunny.", None)
    assert choice.finish_reason == "stop"


def test_auto_streamed_reassembles_into_the_whole_call(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    pieces = ['{"name": "get_weather", ', '"parameters": ', '{"city": ', '"Paris", "unit": "C"}}']
    fake.enqueue(pieces)
    (whole,) = ask(sdk).choices[0].message.tool_calls
    fake.enqueue(pieces)
    (streamed,), finish = streamed_calls(sdk)
    assert finish == "tool_calls" and streamed["name"] == whole.function.name
    assert json.loads(streamed["arguments"]) == json.loads(whole.function.arguments)


def test_a_named_function_is_forced_by_its_schema(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(['{"city": ', '"Paris"}'])
    choice = ask(sdk, tool_choice=NAMED).choices[0]
    ((_, options, _),) = fake.requests
    assert options.json_schema == WEATHER  # the engine may only write the arguments
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and choice.finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    fake.enqueue(['{"city": ', '"Paris"}'])
    (streamed,), _ = streamed_calls(sdk, tool_choice=NAMED)
    assert (streamed["name"], streamed["arguments"]) == ("get_weather", '{"city": "Paris"}')


def test_required_forces_an_array_of_calls(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    output = ['[{"name": "get_weather", "parameters": {"city": "Paris"}}, ',
              '{"name": "get_time", "parameters": {}}]']  # fmt: skip
    fake.enqueue(output)
    calls = ask(sdk, tool_choice="required").choices[0].message.tool_calls
    ((_, options, _),) = fake.requests
    schema = options.json_schema
    assert isinstance(schema, dict) and schema["type"] == "array"
    names = {v["properties"]["name"]["enum"][0] for v in schema["items"]["anyOf"]}
    assert names == {"get_weather", "get_time"}
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})
    ]  # fmt: skip
    fake.enqueue(output)
    streamed, finish = streamed_calls(sdk, tool_choice="required")
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})
    ] and finish == "tool_calls"  # fmt: skip


def test_tool_choice_none_renders_the_tools_but_reads_no_call(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    fake.enqueue(['{"name": "get_weather", "parameters": {"city": "Paris"}}'])
    choice = ask(sdk, tool_choice="none").choices[0]
    assert choice.message.tool_calls is None and choice.message.content.startswith("{")


def test_the_llama31_tool_prompt_token_for_token(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    tools = [TOOLS[0]]
    reply = sdk.chat.completions.create(model="fake-base", messages=QUESTION, tools=tools)
    ((prompt, _, _),) = fake.requests
    tool_json = json.dumps(tools[0], indent=4)
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\n"
        "Today Date: 02 Dec 2026\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its "
        "proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument '
        "name and its value}. Do not use variables.\n\n"
        f"{tool_json}\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    tokenizer = fake.tokenizer
    assert prompt == tokenizer.encode(expected, add_special_tokens=False)
    assert reply.usage is not None and reply.usage.prompt_tokens == len(prompt)  # tools count


def test_a_round_trip_renders_the_call_and_its_result(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    history: list[Any] = [
        *QUESTION,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    fake.enqueue(["It is sunny."])
    reply = ask(sdk, messages=history)
    assert reply.choices[0].message.content == "It is sunny."
    ((prompt, _, _),) = fake.requests
    text = fake.tokenizer.decode(prompt)
    assert text.endswith(
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\nsunny, 21 C<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required", "tools": None}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools.1.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "has space"}}]},
            "tools.0.function.name",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_invalid_tools_are_400_naming_the_param(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "fake-base", "messages": QUESTION, "tools": TOOLS, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param), error


def test_a_chatml_model_without_tools_in_its_template_gets_loragates() -> None:
    from transformers import AutoTokenizer

    from loragate.default_model import ensure_default_model
    from loragate.engine.tool_parsers import AutoCalls, default_parser
    from loragate.prompting import render_prompt_text

    # transformers' tokenizer classes are typed, but not as the structural TemplateTokenizer.
    smol: Any = AutoTokenizer.from_pretrained(ensure_default_model())
    assert "tools" not in smol.chat_template  # SmolLM2's own renders none
    history: list[Any] = [
        *QUESTION,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    text = render_prompt_text(smol, history, add_generation_prompt=True, tools=TOOLS)
    assert json.dumps(TOOLS[0]) in text and "<tools>" in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert default_parser(smol) == "hermes"
    assert default_parser(llama31.shared_tokenizer()) == "llama3_json"
    output = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    (call,) = AutoCalls("hermes", smol, TOOLS, "auto").parse(output).calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Rome"})


def test_required_without_parallel_calls_forces_one_call_object(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    output = ['{"name": "get_weather", ', '"parameters": {"city": "Paris"}}']
    fake.enqueue(output)
    calls = (
        ask(sdk, tool_choice="required", parallel_tool_calls=False).choices[0].message.tool_calls
    )
    ((_, options, _),) = fake.requests
    schema = options.json_schema
    assert isinstance(schema, dict) and "anyOf" in schema  # one object, not an array
    assert all(b["additionalProperties"] is False for b in schema["anyOf"])
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    fake.enqueue(output)
    streamed, finish = streamed_calls(sdk, tool_choice="required", parallel_tool_calls=False)
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
        ("get_weather", {"city": "Paris"})
    ] and finish == "tool_calls"
