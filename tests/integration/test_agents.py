"""The OpenAI Agents SDK on the real gateway: an agent with one function tool runs to its final
answer, on Chat Completions (`OpenAIChatCompletionsModel`) and on the Responses API
(`OpenAIResponsesModel`, streamed).

The first turn forces the call (`ModelSettings(tool_choice=<the tool>)`: structured output makes
it certain, whatever the small model's skill); the SDK's `reset_tool_choice` (its default) then
leaves the next turn to the model, which answers from the tool's result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    RunResult,
    RunResultStreaming,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import Model

from tests.integration.client_support import registered_persona
from tests.integration.conftest import BASE_MODEL
from tests.integration.gateway import Gateway

pytestmark = pytest.mark.integration

PERSONA = "agent-forecaster"
QUESTION = "What is the weather in Paris?"
# One turn for the call, one for the answer; a third would mean the model called again.
MAX_TURNS = 3


@pytest.fixture(scope="module", autouse=True)
def no_tracing() -> Iterator[None]:
    set_tracing_disabled(True)  # its exporter would post each run to OpenAI: no network here
    yield
    set_tracing_disabled(False)


@pytest.fixture(scope="module")
def persona(gateway: Gateway, workspace: Path) -> Iterator[str]:
    with registered_persona(
        gateway, workspace / "agent-bundles", PERSONA, seed=13, description="Agents SDK tests"
    ) as name:
        yield name


def sdk_client(gateway: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=300)


def weather_agent(model: Model) -> tuple[Agent[Any], FunctionTool, list[dict[str, str]]]:
    """The agent, its one tool, and the arguments of each run of the tool."""
    calls: list[dict[str, str]] = []

    @function_tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
        """The current weather in a city."""
        calls.append({"city": city, "unit": unit})
        return f"Sunny and 21 degrees {unit} in {city}."

    agent = Agent(
        name="forecaster",
        instructions="You answer questions about the weather.",
        tools=[get_weather],
        model=model,
        model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=80),
    )
    return agent, get_weather, calls


def check_run(
    result: RunResult | RunResultStreaming, tool: FunctionTool, calls: list[dict[str, str]]
) -> None:
    """The tool ran once with arguments its schema accepts, then the model answered in text."""
    assert [item.type for item in result.new_items] == [
        "tool_call_item",
        "tool_call_output_item",
        "message_output_item",
    ]
    (arguments,) = calls
    jsonschema.validate(arguments, tool.params_json_schema)
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert len(result.raw_responses) == 2


async def test_an_agent_on_chat_completions_calls_its_tool_then_answers(
    gateway: Gateway, persona: str
) -> None:
    async with sdk_client(gateway) as client:
        model = OpenAIChatCompletionsModel(model=persona, openai_client=client)
        agent, tool, calls = weather_agent(model)
        result = await Runner.run(agent, QUESTION, max_turns=MAX_TURNS)
    check_run(result, tool, calls)
    assert agent.reset_tool_choice  # the SDK's default: the answer turn was not forced


async def test_an_agent_on_the_responses_api_streamed(gateway: Gateway) -> None:
    async with sdk_client(gateway) as client:
        model = OpenAIResponsesModel(model=BASE_MODEL, openai_client=client)
        agent, tool, calls = weather_agent(model)
        result = Runner.run_streamed(agent, QUESTION, max_turns=MAX_TURNS)
        events = [
            e.data.type async for e in result.stream_events() if e.type == "raw_response_event"
        ]
    check_run(result, tool, calls)
    # The gateway's semantic events, as the SDK consumed them: the call's, then the answer's.
    assert events.count("response.completed") == 2
    call_done = events.index("response.function_call_arguments.done")
    assert "response.function_call_arguments.delta" in events[:call_done]
    assert "response.output_text.delta" in events[call_done:]
