"""The client helpers and the terminal chat over the fake-engine app (no registry: vLLM-like)."""

from __future__ import annotations

import io

import httpx
import pytest
from fastapi.testclient import TestClient
from openai.types import Model

from loragate.clients import gateway_client, list_personas, served_base_model
from loragate.clients.chat import Sampling, TerminalChat, run
from loragate.clients.openai_client import NO_KEY, gateway_settings, personas_from_models
from loragate.engine.fake import FakeEngine
from tests.unit.conftest import BASE


@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAGATE_BASE_URL", raising=False)
    monkeypatch.delenv("LORAGATE_API_KEY", raising=False)


@pytest.mark.usefixtures("no_client_env")
def test_base_url_and_key_from_arguments_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gateway_settings().base_url == "http://127.0.0.1:8000/v1"
    assert gateway_settings().key() == NO_KEY
    monkeypatch.setenv("LORAGATE_BASE_URL", "http://gpu-box:9000/")
    monkeypatch.setenv("LORAGATE_API_KEY", "sk-env")
    assert gateway_settings().base_url == "http://gpu-box:9000/v1"
    assert gateway_settings().key() == "sk-env"
    given = gateway_settings("https://example.test/proxy/v1", "sk-arg")
    assert (given.base_url, given.key()) == ("https://example.test/proxy/v1", "sk-arg")


def test_personas_of_a_server_without_the_persona_api() -> None:
    card = {"created": 0, "object": "model", "owned_by": "vllm"}
    cards = [  # vLLM's cards: `root` and `parent` are extra fields to the SDK's Model
        Model.model_validate({**card, "id": "base", "root": "/m", "parent": None}),
        Model.model_validate({**card, "id": "sql", "root": "/a/sql", "parent": "base"}),
    ]
    (sql,) = personas_from_models(cards)
    assert (sql.name, sql.base_model, sql.adapter_path, sql.state) == (
        "sql",
        "base",
        "/a/sql",
        None,
    )


def test_listing_falls_back_to_models() -> None:
    def vllm_server(request: httpx.Request) -> httpx.Response:  # vLLM's: no /v1/personas
        if request.url.path == "/v1/models":
            card = {"id": BASE, "object": "model", "created": 0, "owned_by": "vllm"}
            lora = {**card, "id": "sql", "parent": BASE, "root": "/a/sql"}
            return httpx.Response(200, json={"object": "list", "data": [card, lora]})
        return httpx.Response(404, json={"error": {"message": "Not Found"}})

    http = httpx.Client(transport=httpx.MockTransport(vllm_server))
    sdk = gateway_client("http://testserver", max_retries=0, http_client=http)
    assert [p.name for p in list_personas(sdk)] == ["sql"]
    assert served_base_model(sdk) == BASE


def test_terminal_chat_session(client: TestClient, fake: FakeEngine) -> None:
    sdk = gateway_client("http://testserver", max_retries=0, http_client=client)
    out = io.StringIO()
    chat = TerminalChat(sdk, BASE, sampling=Sampling(temperature=0.5, max_tokens=8), out=out)
    fake.enqueue(["Bon", "jour"], ["Again"])
    typed = iter(["Hello", "/system Be brief.", "More", "/persona ghost", "/personas", "/help"])

    def read_line(prompt: str) -> str:
        out.write(prompt)
        return next(typed)  # StopIteration ends the script: make it the Ctrl-D it stands for

    def read_or_eof(prompt: str) -> str:
        try:
            return read_line(prompt)
        except StopIteration:
            raise EOFError from None

    assert run(chat, read_or_eof) == 0
    text = out.getvalue()
    assert f"you> {BASE}> Bonjour\n" in text
    assert f"{BASE}> Again\n" in text
    assert "(system prompt: Be brief.)" in text
    assert f"unknown persona 'ghost'. Available: {BASE}" in text
    assert f"* {BASE}  (base model, no persona)" in text
    assert "/persona NAME" in text  # the help
    assert chat.history == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Again"},
    ]
    # The second request carried the system prompt and the first exchange, and the sampling.
    prompt_ids, options, _ = fake.requests[-1]
    rendered = fake.tokenizer.decode(prompt_ids)
    assert rendered.startswith("<system>Be brief.\n<user>Hello\n<assistant>Bonjour\n<user>More")
    assert (options.temperature, options.max_tokens) == (0.5, 8)
