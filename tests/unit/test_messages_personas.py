"""/v1/messages serves every persona, chosen by `model` as on the OpenAI routes: its adapter, its
system prompt unless the request gives `system`, its sampling defaults where the request is
silent."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest
from anthropic.types import MessageParam
from fastapi.testclient import TestClient

from tests.unit import personas_support
from tests.unit.personas_support import BASE, CountingEngine, write_bundle

USER: list[MessageParam] = [{"role": "user", "content": "hi"}]
SYSTEM_PROMPT = "You are Zhen Huan."

root, engine, client = personas_support.root, personas_support.engine, personas_support.client
raise_server_exceptions = personas_support.raise_server_exceptions


@pytest.fixture
def claude(client: TestClient) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url="http://testserver", api_key="x", http_client=client, max_retries=0
    )


@pytest.fixture
def zhenhuan(client: TestClient, root: Path) -> int:
    bundle = write_bundle(
        root / "zhenhuan",
        version="3",
        system_prompt=SYSTEM_PROMPT,
        defaults={"temperature": 0.3, "top_p": 0.8, "top_k": 9},
    )
    response = client.put("/v1/personas/zhenhuan", json={"path": str(bundle)})
    assert response.status_code == 201, response.text
    adapter_id: int = response.json()["adapter_id"]
    return adapter_id


def test_a_persona_answers_with_its_adapter_prompt_and_defaults(
    claude: anthropic.Anthropic, engine: CountingEngine, zhenhuan: int
) -> None:
    reply = claude.messages.create(model="zhenhuan", max_tokens=5, messages=USER)
    assert reply.model == "zhenhuan"
    prompt, options, adapter = engine.requests[-1]
    assert engine.tokenizer.decode(prompt) == f"<system>{SYSTEM_PROMPT}\n<user>hi\n<assistant>"
    assert (options.temperature, options.top_p, options.top_k) == (0.3, 0.8, 9)
    assert options.max_tokens == 5
    assert adapter is not None and adapter.int_id == zhenhuan


@pytest.mark.usefixtures("zhenhuan")
def test_the_requests_system_and_fields_win(
    claude: anthropic.Anthropic, engine: CountingEngine
) -> None:
    claude.messages.create(
        model="zhenhuan@3",
        max_tokens=5,
        messages=USER,
        system="Be brief.",
        extra_body={"temperature": 0.9},
    )
    prompt, options, _ = engine.requests[-1]
    assert engine.tokenizer.decode(prompt) == "<system>Be brief.\n<user>hi\n<assistant>"
    assert (options.temperature, options.top_p) == (0.9, 0.8)


@pytest.mark.usefixtures("zhenhuan")
def test_the_base_model_and_an_unknown_persona(
    claude: anthropic.Anthropic, engine: CountingEngine
) -> None:
    claude.messages.create(model=BASE, max_tokens=5, messages=USER)
    assert engine.requests[-1][2] is None
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.messages.create(model="huanhuan", max_tokens=5, messages=USER)
    assert "zhenhuan" in raised.value.message and BASE in raised.value.message
