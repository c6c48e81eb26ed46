from __future__ import annotations

import json

import openai
from fastapi.testclient import TestClient

from loragate.engine.fake import FakeEngine
from tests.unit.conftest import BASE


def test_completion_stream_with_usage(client: TestClient, fake: FakeEngine) -> None:
    fake.enqueue(["a", "b"])
    body = {"model": BASE, "prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["text"] for e in events for c in e["choices"]) == "ab"
    assert events[-1]["usage"]["completion_tokens"] == 2
    finishes = [c["finish_reason"] for e in events for c in e["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])


def test_multi_prompt_completion_indexes(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=BASE, prompt=["a", "b"], n=2, temperature=1)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]


def test_echo_prefixes_prompt(sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model=BASE, prompt="abc", echo=True)
    assert reply.choices[0].text == "abcHello world"


def test_empty_prompt_is_400(sdk: openai.OpenAI) -> None:
    import pytest

    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model=BASE, prompt=[])


def test_greedy_with_n_two_is_400(sdk: openai.OpenAI) -> None:
    import pytest

    with pytest.raises(openai.BadRequestError) as err:
        sdk.completions.create(model=BASE, prompt="x", n=2, temperature=0)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "n"
