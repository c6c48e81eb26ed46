"""The issue's first promise: a newcomer's two calls work on the real model."""

from __future__ import annotations

import subprocess

import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


def test_paris_not_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=BASE_MODEL, messages=FRANCE, temperature=0)
    assert "Paris" in (reply.choices[0].message.content or "")


def test_paris_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=BASE_MODEL,
        messages=FRANCE,
        temperature=0,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in text


def test_tutorial_curl(gateway: Gateway) -> None:
    curl = [
        "curl", "-s", "-X", "POST", gateway.legacy_url,
        "-H", "Content-Type: application/json",
        "-d", '{"prompt": "你好"}',
    ]  # fmt: skip
    out = subprocess.run(
        curl,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    import json

    body = json.loads(out)
    assert set(body) == {"response", "status", "time"}
    assert body["status"] == 200 and isinstance(body["response"], str) and body["response"]
