"""Tool calling on the real engine, through the official openai SDK, on the base model and a
persona: forced calls (a named function, `required`) always parse and match the schema, streamed
or not, and a call's result goes back for a final answer.

The embedded SmolLM2-135M-Instruct has no tools in its template: loragate's ChatML tool template
renders them, and vLLM's hermes parser reads `auto` calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway
from tests.integration.lora_factory import make_lora_adapter
from tests.integration.persona_support import PersonaApi

pytestmark = pytest.mark.integration

PERSONA = "tool-persona"
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER,
        },
    }
]
QUESTION: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def persona(gateway: Gateway, workspace: Path) -> Iterator[str]:
    adapter = make_lora_adapter(workspace / PERSONA, seed=11, std=0.05)
    with PersonaApi(gateway) as api:
        api.put_ok(PERSONA, adapter)
        yield PERSONA
        api.delete(PERSONA)


def forced(client: openai.OpenAI, model: str, tool_choice: Any) -> Any:
    # One call: with parallel calls allowed, a small model appends calls until max_tokens.
    return client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice=tool_choice, max_tokens=100,
        temperature=0, parallel_tool_calls=False,
    )  # fmt: skip


def streamed(client: openai.OpenAI, model: str, tool_choice: Any) -> list[dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice=tool_choice, max_tokens=100,
        temperature=0, parallel_tool_calls=False, stream=True,
    )  # fmt: skip
    for chunk in stream:
        for piece in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            assert piece.function is not None
            if piece.index not in calls:  # the id and the name come first
                assert piece.id and piece.function.name
                calls[piece.index] = {"name": piece.function.name, "arguments": ""}
            calls[piece.index]["arguments"] += piece.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
@pytest.mark.parametrize("on", ["base", "persona"])
def test_a_forced_call_parses_and_matches_the_schema(
    client: openai.OpenAI, persona: str, on: str, tool_choice: Any
) -> None:
    model = BASE_MODEL if on == "base" else persona
    choice = forced(client, model, tool_choice).choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    calls = choice.message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    pieces = streamed(client, model, tool_choice)
    assert [(p["name"], json.loads(p["arguments"])) for p in pieces] == [
        (c.function.name, json.loads(c.function.arguments)) for c in calls
    ]  # greedy: the stream reassembles into the same calls


def test_a_round_trip_from_call_to_final_answer(client: openai.OpenAI, persona: str) -> None:
    reply = forced(client, persona, NAMED)
    (call,) = reply.choices[0].message.tool_calls
    history: list[Any] = [
        *QUESTION,
        {"role": "assistant", "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    final = client.chat.completions.create(
        model=persona, messages=history, tools=TOOLS, tool_choice="none", max_tokens=30,
        temperature=0,
    )  # fmt: skip
    choice = final.choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert final.usage is not None and reply.usage is not None
    assert final.usage.prompt_tokens > reply.usage.prompt_tokens


def test_tools_count_in_the_prompt_tokens(client: openai.OpenAI) -> None:
    bare = client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, max_tokens=1)
    offered = client.chat.completions.create(
        model=BASE_MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", max_tokens=1
    )
    assert bare.usage is not None and offered.usage is not None
    assert offered.usage.prompt_tokens > bare.usage.prompt_tokens + len(json.dumps(TOOLS)) // 8
