"""Tool calling on chat completions: the tools a request offers, the constraint a forced call
puts on the engine, and the reader that turns the output into OpenAI's `tool_calls`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loragate.engine.tool_parsers import (
    AUTO_PARSER,
    AutoCalls,
    ForcedCalls,
    default_parser,
    forced_call_schema,
    parser_names,
)
from loragate.server.errors import BadRequestError
from loragate.server.protocol import ChatCompletionRequest, NamedToolChoice, ToolChoice

CallReader = AutoCalls | ForcedCalls


def resolve_parser(setting: str, tokenizer: Any) -> str:
    """--tool-call-parser: `auto` picks the served model family's; a name must be vLLM's."""
    if setting == AUTO_PARSER:
        return default_parser(tokenizer)
    names = parser_names()
    if setting not in names:
        raise ValueError(f"--tool-call-parser {setting!r} is not one of vLLM's: {', '.join(names)}")
    return setting


@dataclass(frozen=True)
class ToolPlan:
    tools: list[dict[str, Any]]  # as OpenAI's wire writes them: for the template and the parser
    choice: ToolChoice
    parallel: bool | None
    parser: str

    @property
    def named(self) -> str | None:
        return self.choice.function.name if isinstance(self.choice, NamedToolChoice) else None

    @property
    def forced(self) -> bool:
        return self.choice == "required" or self.named is not None

    def forced_schema(self) -> dict[str, Any] | None:
        if not self.forced:
            return None
        choice = (
            self.choice.model_dump() if isinstance(self.choice, NamedToolChoice) else "required"
        )
        return forced_call_schema(self.tools, choice, self.parallel)

    def reader(self, tokenizer: Any) -> CallReader | None:
        """A fresh reader for one choice's output (streaming readers keep state)."""
        if self.choice == "none":
            return None
        if self.forced:
            single = self.choice == "required" and self.parallel is False
            return ForcedCalls(self.named, single=single)
        return AutoCalls(self.parser, tokenizer, self.tools, "auto")


def tool_plan(request: ChatCompletionRequest, parser: str) -> ToolPlan | None:
    if not request.tools:
        return None
    plan = ToolPlan(
        tools=[tool.model_dump(exclude_none=True) for tool in request.tools],
        choice=request.effective_tool_choice(),
        parallel=request.parallel_tool_calls,
        parser=parser,
    )
    constrained = request.response_format is not None and request.response_format.type != "text"
    if plan.forced and (constrained or request.structured_outputs is not None):
        raise BadRequestError(
            "A forced tool call (tool_choice required or a named function) already constrains "
            "the output: give response_format or structured_outputs only with tool_choice auto",
            param="tool_choice",
        )
    return plan
