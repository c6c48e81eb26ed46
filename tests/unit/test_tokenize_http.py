"""vLLM's /tokenize and /detokenize over a scripted engine with Llama-3.1's tokenizer."""

from __future__ import annotations

import datetime
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from loragate.engine.fake import FakeEngine
from tests import llama31

# Slow by nature: vLLM's tool parsers or a 128k-vocabulary tokenizer load first (seconds);
# `make test` runs it, `make unit` does not.
pytestmark = pytest.mark.slow

QUESTION: list[Any] = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr("loragate.prompting.today", lambda: datetime.date(2026, 12, 2))
    return llama31.Llama31Engine(llama31.shared_tokenizer())


def test_a_text_gets_bos_by_default(client: TestClient, fake: FakeEngine) -> None:
    body = client.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True})
    assert body.status_code == 200, body.text
    result = body.json()
    assert result["tokens"][0] == llama31.BOS and result["count"] == len(result["tokens"])
    assert result["max_model_len"] == fake.max_model_len
    assert "".join(result["token_strs"]) == "<|begin_of_text|>Hello world"
    bare = client.post("/tokenize", json={"prompt": "Hello world", "add_special_tokens": False})
    assert bare.json()["tokens"] == result["tokens"][1:]


def test_a_conversation_is_the_prompt_chat_sends(
    client: TestClient, sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    result = client.post("/tokenize", json={"model": "fake-base", "messages": QUESTION}).json()
    sdk.chat.completions.create(model="fake-base", messages=QUESTION)
    ((prompt, _, _),) = fake.requests
    assert result["tokens"] == prompt and prompt.count(llama31.BOS) == 1


def test_detokenize_round_trips(client: TestClient) -> None:
    ids = client.post("/tokenize", json={"prompt": "你好, Zhen Huan"}).json()["tokens"]
    text = client.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert text == "<|begin_of_text|>你好, Zhen Huan"


@pytest.mark.parametrize(
    ("route", "body", "status", "param"),
    [
        ("/tokenize", {"prompt": "x", "messages": QUESTION}, 400, "prompt"),
        ("/tokenize", {}, 400, "prompt"),
        ("/tokenize", {"prompt": "x", "model": "nope"}, 404, "model"),
        ("/detokenize", {"tokens": [128256]}, 400, "tokens"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens.0"),
    ],
)
def test_bad_input_is_refused_naming_the_param(
    client: TestClient, route: str, body: dict[str, Any], status: int, param: str
) -> None:
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
