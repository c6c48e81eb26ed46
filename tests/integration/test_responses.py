"""The Responses API on the real engine through the official openai SDK: text, the event
stream, a function call and its output, and a conversation continued across a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway, running_gateway

pytestmark = pytest.mark.integration

CITY: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "parameters": CITY}]
ORDER = [
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added", "response.output_text.delta", "response.output_text.done",
    "response.content_part.done", "response.output_item.done", "response.completed",
]  # fmt: skip


def test_a_text_response_and_its_stream(client: openai.OpenAI) -> None:
    whole = client.responses.create(
        model=BASE_MODEL, input="Name three colours.", max_output_tokens=12, temperature=0
    )
    assert whole.output_text and whole.status in ("completed", "incomplete")
    assert whole.usage is not None and whole.usage.output_tokens <= 12
    events = list(client.responses.create(
        model=BASE_MODEL, input="Name three colours.", max_output_tokens=12, temperature=0,
        stream=True,
    ))  # fmt: skip
    kinds = [e.type for e in events]
    deduplicated = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert deduplicated[:-1] == ORDER[:-1]
    assert deduplicated[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text  # greedy: the same text


def test_a_function_call_and_its_output(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=BASE_MODEL, input="What is the weather in Paris?", tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
    )  # fmt: skip
    (call,) = [item for item in first.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), CITY)
    second = client.responses.create(
        model=BASE_MODEL, previous_response_id=first.id, tools=TOOLS, tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        max_output_tokens=20,
    )  # fmt: skip
    assert second.output_text and second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the stored turn is in it


def test_a_conversation_continues_across_a_restart(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]

    def ask(gateway: Gateway, **fields: Any) -> Any:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="k", max_retries=0, timeout=300)
        return client.responses.create(model=BASE_MODEL, max_output_tokens=8, **fields), client

    with running_gateway(tmp_path / "first.log", state) as gateway:
        first, _ = ask(gateway, input="My name is Ada. Say hello.")
    with running_gateway(tmp_path / "second.log", state) as gateway:
        second, client = ask(gateway, input="What is my name?", previous_response_id=first.id)
        assert client.responses.retrieve(first.id).output_text == first.output_text
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
