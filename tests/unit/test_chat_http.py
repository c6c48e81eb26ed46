from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletionMessageParam

from loragate.engine.fake import FakeEngine
from tests.unit.conftest import BASE

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def test_chat_completion_returns_scripted_text_and_exact_usage(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    fake.enqueue(["Hel", "lo"])
    reply = sdk.chat.completions.create(model=BASE, messages=USER)
    assert reply.choices[0].message.content == "Hello"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == BASE
    prompt_ids = fake.requests[0][0]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 2


def test_stream_ends_with_usage_then_done(client: TestClient, fake: FakeEngine) -> None:
    fake.enqueue(["a", "b", "c"])
    body = {
        "model": BASE,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert text == "abc"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 3
    assert all(e["usage"] is None for e in events[:-1])


def test_unknown_model_is_404_listing_valid_names(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="nope", messages=USER)
    assert BASE in err.value.message
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "model"


def test_invalid_field_is_400_naming_param(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=BASE, messages=USER, temperature=5)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "temperature"


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", content=b"{bad", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_prompt_longer_than_context_is_400_with_both_lengths(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    long: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "x" * (fake.max_model_len + 10)}
    ]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=BASE, messages=long)
    assert str(fake.max_model_len) in err.value.message
    assert err.value.code == "context_length_exceeded"


def test_dead_engine_is_503(sdk: openai.OpenAI, fake: FakeEngine, client: TestClient) -> None:
    fake.dead = True
    with pytest.raises(openai.InternalServerError) as err:
        sdk.chat.completions.create(model=BASE, messages=USER)
    assert err.value.status_code == 503
    assert client.get("/health").status_code == 503


def test_error_mid_stream_is_error_event_then_done(client: TestClient, fake: FakeEngine) -> None:
    from loragate.engine.fake import Die

    fake.enqueue(["partial", Die()])
    body = {"model": BASE, "messages": USER, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "engine_unavailable"


def test_sdk_raises_on_error_mid_stream(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    from loragate.engine.fake import Die

    fake.enqueue(["partial", Die()])
    stream = sdk.chat.completions.create(model=BASE, messages=USER, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_persona_system_prompt_absent_for_base(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    sdk.chat.completions.create(model=BASE, messages=USER)
    prompt = fake.tokenizer.decode(fake.requests[0][0])
    assert prompt == "<user>hi\n<assistant>"


def test_sampling_fields_reach_the_engine(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    sdk.chat.completions.create(
        model=BASE,
        messages=USER,
        n=2,
        max_completion_tokens=7,
        temperature=0.3,
        top_p=0.5,
        seed=3,
        stop=["x", "y"],
        presence_penalty=0.1,
        frequency_penalty=0.2,
        extra_body={
            "top_k": 5,
            "min_p": 0.1,
            "repetition_penalty": 1.1,
            "ignore_eos": True,
            "min_tokens": 2,
        },
    )
    options = fake.requests[0][1]
    assert (options.n, options.max_tokens, options.temperature, options.top_p) == (2, 7, 0.3, 0.5)
    assert options.stop == ("x", "y") and options.seed == 3
    assert (options.top_k, options.min_p, options.repetition_penalty) == (5, 0.1, 1.1)
    assert options.ignore_eos and options.min_tokens == 2


def test_n_two_gives_two_choices(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model=BASE, messages=USER, n=2)
    assert [c.index for c in reply.choices] == [0, 1]


def test_json_schema_reaches_engine(sdk: openai.OpenAI, fake: FakeEngine) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
    }
    sdk.chat.completions.create(
        model=BASE,
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert fake.requests[0][1].json_schema == schema


def test_request_id_header_echoed(client: TestClient) -> None:
    response = client.get("/health", headers={"X-Request-Id": "abc123"})
    assert response.headers["x-request-id"] == "abc123"
    assert client.get("/health").headers["x-request-id"]
