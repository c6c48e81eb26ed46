"""The clients of loragate.clients against the real session gateway (vLLM, the default model)."""

from __future__ import annotations

import functools
import io
import json
import operator
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from loragate.clients import (
    alist_personas,
    async_gateway_client,
    gateway_client,
    list_personas,
    served_base_model,
)
from loragate.clients.chat import Sampling, TerminalChat
from loragate.clients.langchain import GatewayLLM, LLaMA3_1_LLM, gateway_chat_model
from loragate.clients.legacy import LegacyRequestError, get_completion
from tests.integration.client_support import persona_info, registered_persona
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

PERSONA = "clients-scribe"
DESCRIPTION = "A test persona of the client tests"
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def persona(gateway: Gateway, workspace: Path) -> Iterator[str]:
    with registered_persona(
        gateway, workspace / "client-bundles", PERSONA, seed=11, description=DESCRIPTION
    ) as name:
        yield name


def engine_idle(gateway: Gateway, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if httpx.get(f"{gateway.base_url}/engine/status", timeout=10).json()["unfinished_requests"]:
            time.sleep(0.2)
        else:
            return True
    return False


def served(gateway: Gateway, name: str) -> int:
    count: int = persona_info(gateway, name)["requests_served"]
    return count


def test_openai_client_from_the_environment(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_BASE_URL", gateway.url)  # bare host:port: /v1 is added
    monkeypatch.delenv("LORAGATE_API_KEY", raising=False)
    with gateway_client(max_retries=0, timeout=300) as client:
        assert str(client.base_url) == f"{gateway.base_url}/"
        reply = client.chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": FRANCE}], temperature=0
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        stream = client.chat.completions.create(
            model=BASE_MODEL,
            messages=[{"role": "user", "content": FRANCE}],
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text


async def test_async_openai_client_plain_and_streamed(gateway: Gateway, persona: str) -> None:
    async with async_gateway_client(gateway.base_url, max_retries=0, timeout=300) as client:
        reply = await client.chat.completions.create(
            model=BASE_MODEL, messages=[{"role": "user", "content": FRANCE}], temperature=0
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        before = served(gateway, persona)
        stream = await client.chat.completions.create(
            model=persona,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        assert {c.model for c in chunks} == {persona}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert served(gateway, persona) == before + 1
        assert persona in [p.name for p in await alist_personas(client)]


def test_personas_listed_with_their_details(gateway: Gateway, persona: str) -> None:
    with gateway_client(gateway.base_url) as client:
        listed = {p.name: p for p in list_personas(client)}
        assert served_base_model(client) == BASE_MODEL
    assert listed[persona].description == DESCRIPTION
    assert listed[persona].state in ("registered", "loading", "loaded")


def test_langchain_invoke_stream_and_batch_with_a_persona(gateway: Gateway, persona: str) -> None:
    chat = gateway_chat_model(persona, base_url=gateway.base_url, temperature=0, max_tokens=32)
    before = served(gateway, persona)

    answer = chat.invoke("Name three colours.")
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str) and answer.content
    assert answer.response_metadata["model_name"] == persona

    chunks = list(chat.stream("Name three colours."))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    streamed = "".join(str(c.content) for c in chunks)
    assert streamed[:8] == answer.content[:8]  # greedy; only late tokens may vary with batching
    merged = functools.reduce(operator.add, chunks)
    assert merged.usage_metadata is not None and merged.usage_metadata["output_tokens"] > 2

    replies = chat.batch(["Say hello.", "Say goodbye.", "Count to three."])
    assert len(replies) == 3 and all(r.content for r in replies)
    assert served(gateway, persona) == before + 5


def test_langchain_persona_per_call(gateway: Gateway, persona: str) -> None:
    chat = gateway_chat_model(base_url=gateway.base_url, temperature=0, max_tokens=16)
    assert chat.model_name == BASE_MODEL
    base = chat.invoke("Say hello.")
    chosen = chat.invoke("Say hello.", persona=persona)
    assert base.response_metadata["model_name"] == BASE_MODEL
    assert chosen.response_metadata["model_name"] == persona


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


def test_langchain_structured_output_with_a_persona(gateway: Gateway, persona: str) -> None:
    chat = gateway_chat_model(persona, base_url=gateway.base_url, temperature=0, max_tokens=200)
    before = served(gateway, persona)
    city = chat.with_structured_output(City).invoke(
        f"{FRANCE} Answer with the city and its country."
    )
    assert isinstance(city, City) and city.name and city.country
    assert served(gateway, persona) == before + 1


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


WEATHER_QUESTION = "What is the weather in Paris?"


def test_langchain_bind_tools_forced_on_a_persona(gateway: Gateway, persona: str) -> None:
    chat = gateway_chat_model(persona, base_url=gateway.base_url, temperature=0, max_tokens=60)
    bound = chat.bind_tools([GetWeather], tool_choice="GetWeather")  # a named, forced call
    before = served(gateway, persona)
    answer = bound.invoke(WEATHER_QUESTION)
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["finish_reason"] == "tool_calls"
    (call,) = answer.tool_calls
    assert call["name"] == "GetWeather" and call["id"]
    GetWeather.model_validate(call["args"])

    merged = functools.reduce(operator.add, bound.stream(WEATHER_QUESTION))
    assert isinstance(merged, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(call["name"], call["args"])]

    weather = chat.with_structured_output(GetWeather, method="function_calling")
    assert isinstance(weather.invoke(WEATHER_QUESTION), GetWeather)
    assert served(gateway, persona) == before + 3


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """The current weather in a city."""
    return f"Sunny and 21 degrees {unit} in {city}."


def test_langchain_tool_round_trip_with_the_persona_per_call(
    gateway: Gateway, persona: str
) -> None:
    chat = gateway_chat_model(base_url=gateway.base_url, temperature=0, max_tokens=60)
    # "any" is LangChain's word for OpenAI's "required"; one call, not parallel ones.
    bound = chat.bind_tools([get_weather], tool_choice="any", parallel_tool_calls=False)
    question = HumanMessage(WEATHER_QUESTION)
    asked = bound.invoke([question], persona=persona)
    assert isinstance(asked, AIMessage)
    assert asked.response_metadata["model_name"] == persona
    (call,) = asked.tool_calls
    result = get_weather.invoke(call)  # the tool validates its arguments: a ToolMessage
    assert result.tool_call_id == call["id"] and "Sunny" in result.content
    final = chat.invoke([question, asked, result], persona=persona)
    assert isinstance(final.content, str) and final.content and not final.tool_calls


def test_tutorial_llm_class_over_http(gateway: Gateway, persona: str) -> None:
    llm = LLaMA3_1_LLM(base_url=gateway.base_url, max_tokens=24, temperature=0)
    assert isinstance(llm, GatewayLLM)
    assert llm.invoke("你好")
    assert "Paris" in llm.invoke(FRANCE)

    before = served(gateway, persona)
    scribe = GatewayLLM(persona=persona, base_url=gateway.base_url, max_tokens=24)
    pieces = list(scribe.stream("Say hello."))
    assert len(pieces) > 1 and "".join(pieces)
    assert served(gateway, persona) == before + 1


def test_legacy_get_completion(gateway: Gateway, persona: str) -> None:
    assert get_completion("你好", url=gateway.legacy_url, max_new_tokens=24)
    before = served(gateway, persona)
    assert get_completion("你好", persona, url=gateway.legacy_url, max_new_tokens=24)
    assert served(gateway, persona) == before + 1
    with pytest.raises(LegacyRequestError) as refused:
        get_completion("你好", "no-such-persona", url=gateway.legacy_url)
    assert refused.value.status == 404
    assert "no-such-persona" in refused.value.message and persona in refused.value.message


def test_terminal_chat_as_a_command(gateway: Gateway, persona: str) -> None:
    typed = "\n".join(
        [
            FRANCE,
            "/personas",
            f"/persona {persona}",
            "Say hello.",
            "/persona no-such-persona",
            "/clear",
            "/quit",
        ]
    )
    args = ["--base-url", gateway.base_url, "--temperature", "0", "--max-tokens", "24"]
    done = subprocess.run(
        [sys.executable, "-m", "loragate.cli", "chat", *args],
        input=typed,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = done.stdout
    assert f"Chatting with {BASE_MODEL}" in out
    assert f"{BASE_MODEL}> " in out and "Paris" in out
    assert f"{persona}  (" in out and DESCRIPTION in out  # the /personas listing
    assert f"(now talking to {persona})" in out and f"{persona}> " in out
    assert "unknown persona 'no-such-persona'" in out
    assert "(conversation cleared)" in out


def test_terminal_chat_shows_a_forced_tool_call(gateway: Gateway, tmp_path: Path) -> None:
    weather = GetWeather.model_json_schema()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    typed = "\n".join([WEATHER_QUESTION, '/result {"sky": "clear", "degrees": 21}', "/quit"])
    args = ["--base-url", gateway.base_url, "--temperature", "0", "--max-tokens", "40"]
    tool_args = ["--tools", str(tmp_path / "tools.json"), "--tool-choice", "get_weather"]
    done = subprocess.run(
        [sys.executable, "-m", "loragate.cli", "chat", *args, *tool_args],
        input=typed,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert "(tools offered: get_weather; tool_choice get_weather)" in lines
    prefix = f"you> {BASE_MODEL}> [tool call] get_weather("
    (shown,) = [line for line in lines if line.startswith(prefix)]
    jsonschema.validate(json.loads(shown.removeprefix(prefix).removesuffix(")")), weather)
    answer = lines[lines.index(shown) + 2]  # after the hint: the reply to the result
    assert answer.startswith(f"you> {BASE_MODEL}> ")


def test_terminal_chat_keeps_history_and_reports_errors(gateway: Gateway) -> None:
    out = io.StringIO()
    with gateway_client(gateway.base_url, max_retries=0, timeout=300) as client:
        sampling = Sampling(temperature=0, max_tokens=16)
        chat = TerminalChat(client, BASE_MODEL, sampling=sampling, out=out)
        chat.handle("My name is Ada.")
        chat.handle("What is my name?")
        assert [m["role"] for m in chat.history] == ["user", "assistant"] * 2
        assert all(m["content"] for m in chat.history)

        chat.sampling = Sampling(temperature=5.0)  # out of range: the gateway refuses
        chat.handle("Hello?")
        assert "[error] Invalid value for 'temperature'" in out.getvalue()
        assert len(chat.history) == 4  # the refused turn is not kept

    chat.handle("/clear")
    assert chat.history == []


def test_terminal_chat_ctrl_c_stops_a_reply(gateway: Gateway) -> None:
    args = ["--base-url", gateway.base_url, "--temperature", "0", "--max-tokens", "1000"]
    chat = subprocess.Popen(
        [sys.executable, "-u", "-m", "loragate.cli", "chat", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert chat.stdin is not None and chat.stdout is not None
    try:
        chat.stdin.write("Write a very long story about a lighthouse keeper.\n")
        chat.stdin.flush()
        seen = ""
        while f"{BASE_MODEL}> " not in seen or len(seen.split(f"{BASE_MODEL}> ")[1]) < 30:
            seen += chat.stdout.read(1)
        chat.send_signal(signal.SIGINT)
        assert engine_idle(gateway, within_s=20), "the reply went on after Ctrl-C"
        out, _ = chat.communicate("/quit\n", timeout=60)
    finally:
        if chat.poll() is None:
            chat.kill()
    assert " [stopped]" in seen + out
    assert chat.returncode == 0
