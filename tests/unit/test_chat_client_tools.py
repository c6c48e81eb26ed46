"""`loragate chat` with tools, over a scripted engine with Llama-3.1's tokenizer: a call is
printed (never run), `/result` answers it, and `--tools FILE` is checked before any request."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from loragate.clients.chat import TerminalChat
from loragate.clients.chat_tools import ToolOffer, load_tools
from loragate.engine.fake import FakeEngine
from tests import llama31
from tests.unit.conftest import BASE

# Llama-3.1's 128k-vocabulary tokenizer and vLLM's tool parsers take about 20 s to load.
pytestmark = pytest.mark.slow

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr("loragate.prompting.today", lambda: datetime.date(2026, 12, 2))
    return llama31.Llama31Engine(llama31.shared_tokenizer())


def test_a_forced_call_is_printed_and_its_result_answered(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    out = io.StringIO()
    chat = TerminalChat(sdk, BASE, tools=ToolOffer(TOOLS, "get_weather"), out=out)
    fake.enqueue(['{"city": ', '"Paris"}'], ["It is ", "sunny."])
    chat.handle("Weather in Paris?")
    assert f'{BASE}> [tool call] get_weather({{"city": "Paris"}})\n' in out.getvalue()
    assert "/result TEXT answers the call" in out.getvalue()
    (call_id,) = chat.pending_calls()
    function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert chat.history[-1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function", "function": function}],
    }

    chat.handle("/result sunny, 21 °C")
    assert f"{BASE}> It is sunny.\n" in out.getvalue()
    assert chat.history[-2:] == [
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 °C"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    (_, forced, _), (_, after, _) = fake.requests
    assert forced.json_schema == WEATHER
    assert after.json_schema is None  # after a result: auto, or the forced call would repeat
    chat.handle("/result again")
    assert "(no tool call is waiting for a result)" in out.getvalue()


def test_several_calls_each_on_a_line_and_each_awaiting_its_result(
    sdk: openai.OpenAI, fake: FakeEngine
) -> None:
    out = io.StringIO()
    chat = TerminalChat(sdk, BASE, tools=ToolOffer(TOOLS, "required"), out=out)
    fake.enqueue(
        ['[{"name": "get_weather", "parameters": {"city": "Paris"}}, ',
         '{"name": "get_time", "parameters": {}}]'],
        ["Done."],
    )  # fmt: skip
    chat.handle("Weather and time?")
    text = out.getvalue()
    assert '[tool call] get_weather({"city": "Paris"})\n[tool call] get_time({})\n' in text
    first, second = chat.pending_calls()
    chat.handle("/result sunny")
    assert chat.pending_calls() == [second] and len(fake.requests) == 1
    assert "1 more call(s) wait for theirs" in out.getvalue()
    chat.handle("/result 10:00")
    assert [m.get("tool_call_id") for m in chat.history[-3:-1]] == [first, second]
    assert chat.history[-1] == {"role": "assistant", "content": "Done."}


def test_the_tools_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "tools.json"
    good.write_text(json.dumps(TOOLS))
    offer = load_tools(good, "get_time")
    assert offer.choice_param() == {"type": "function", "function": {"name": "get_time"}}
    assert load_tools(good).choice_param() == "auto"
    with pytest.raises(ValueError, match="not a mode nor a tool"):
        load_tools(good, "get_news")
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"type": "function"}', '[{"type": "function", "function": {}}]'):
        bad.write_text(text)
        with pytest.raises(ValueError, match=str(bad)):
            load_tools(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_tools(tmp_path / "missing.json")
