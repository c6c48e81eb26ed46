"""The Responses API over a scripted engine, driven by the official openai SDK."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.responses import ResponseCompletedEvent, ResponseFunctionToolCall

from loragate.engine.fake import FakeEngine
from loragate.server.app import create_app
from loragate.settings import ServerSettings
from tests import llama31
from tests.unit.conftest import fake_state_factory

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

MODEL = "fake-base"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr("loragate.prompting.today", lambda: datetime.date(2026, 12, 2))
    return llama31.Llama31Engine(llama31.shared_tokenizer())


@pytest.fixture
def client(fake: FakeEngine, tmp_path: Path) -> Iterator[TestClient]:
    settings = ServerSettings(_env_file=None, state_dir=tmp_path / "state")  # type: ignore[call-arg]
    with TestClient(create_app(settings, fake_state_factory(fake))) as test_client:
        yield test_client


def sdk_with(client: TestClient, key: str = "key-a") -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0
    )


@pytest.fixture
def sdk(client: TestClient) -> openai.OpenAI:
    return sdk_with(client)


def prompt_text(fake: FakeEngine, index: int = -1) -> str:
    text: str = fake.tokenizer.decode(fake.requests[index][0])
    return text


def test_a_text_response(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(["Hello", " there"])
    response = sdk.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    assert (response.status, response.output_text) == ("completed", "Hello there")
    assert response.id.startswith("resp_") and response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens == 2
    assert response.usage.input_tokens == len(fake.requests[0][0])
    assert "Be brief.<|eot_id|>" in prompt_text(fake)  # instructions: the system turn


def test_the_stream_sends_the_semantic_events_in_order(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", "lo"])
    events = list(sdk.responses.create(model=MODEL, input="Hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type == "response.completed" and final.response.output_text == "Hello"


def test_the_token_budget_makes_it_incomplete(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(["a", "b", "c"])
    response = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_a_function_call_and_its_output(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(['{"city": "Paris"}'])
    first = sdk.responses.create(
        model=MODEL, input="Weather in Paris?", tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
    )  # fmt: skip
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    fake.enqueue(["It is sunny."])
    second = sdk.responses.create(
        model=MODEL, previous_response_id=first.id, tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )  # fmt: skip
    assert second.output_text == "It is sunny."
    text = prompt_text(fake)
    assert "Weather in Paris?" in text  # the stored conversation continues
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\nsunny<|eot_id|>" in text


def test_a_streamed_function_call(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(['[{"name": "get_weather", ', '"parameters": {"city": "Paris"}}]'])
    events = list(sdk.responses.create(
        model=MODEL, input="Weather?", tools=TOOLS, tool_choice="required", stream=True
    ))  # fmt: skip
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"
    ]  # fmt: skip
    final = events[-1]
    assert isinstance(final, ResponseCompletedEvent)
    (call,) = final.response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_stored_responses_are_the_keys_own(client: TestClient, fake: FakeEngine) -> None:
    mine, theirs = sdk_with(client, "key-a"), sdk_with(client, "key-b")
    fake.enqueue(["Hello"])
    response = mine.responses.create(model=MODEL, input="Hi")
    assert mine.responses.retrieve(response.id).output_text == "Hello"
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model=MODEL, input="Hi", previous_response_id=response.id)
    mine.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(response.id)


def test_store_false_keeps_nothing(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    fake.enqueue(["Hello"])
    response = sdk.responses.create(model=MODEL, input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"input": []}, "input"),
        ({"background": True}, "background"),
    ],
)
def test_unsupported_or_invalid_fields_are_400s(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "input": "Hi", **fields}
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)
