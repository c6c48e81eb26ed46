"""Tool calls in `loragate chat`: the tools offered (`--tools FILE`, `--tool-choice`), and a
reply's calls assembled from their streamed deltas, printed, never run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from openai.types.chat import (
        ChatCompletionToolChoiceOptionParam,
        ChatCompletionToolUnionParam,
    )
    from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

ToolMode = Literal["auto", "none", "required"]
TOOL_MODES: dict[str, ToolMode] = {"auto": "auto", "none": "none", "required": "required"}


@dataclass
class ToolOffer:
    """The tools offered with every request, and `tool_choice`: a mode or a function's name."""

    tools: list[ChatCompletionToolUnionParam]
    choice: str = "auto"

    def choice_param(self) -> ChatCompletionToolChoiceOptionParam:
        mode = TOOL_MODES.get(self.choice)
        return mode or {"type": "function", "function": {"name": self.choice}}


def load_tools(path: Path, choice: str = "auto") -> ToolOffer:
    """`--tools FILE`: a JSON list of OpenAI function tools; ValueError says what is wrong."""
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the tools in {path}: {exc}") from exc
    if not isinstance(tools, list) or not all(function_name(t) for t in tools):
        raise ValueError(
            f"{path} must hold a JSON list of tools, each "
            '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
        )
    names = [function_name(t) for t in tools]
    if choice not in TOOL_MODES and choice not in names:
        listed = ", ".join(str(n) for n in names) or "none"
        raise ValueError(f"--tool-choice {choice!r} is not a mode nor a tool (tools: {listed})")
    return ToolOffer(tools, choice)


def function_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


@dataclass
class ToolCall:
    """One call of a reply, assembled from its streamed deltas."""

    id: str = ""
    name: str = ""
    arguments: str = ""

    def describe(self) -> str:
        """`[tool call] get_weather({"city": "Paris"})`: the arguments as JSON when they parse."""
        try:
            arguments = json.dumps(json.loads(self.arguments), ensure_ascii=False)
        except ValueError:
            arguments = self.arguments
        return f"[tool call] {self.name}({arguments})"

    def param(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


def gather_calls(calls: dict[int, ToolCall], pieces: list[ChoiceDeltaToolCall]) -> None:
    """Add one chunk's call deltas: the id and name come with a call's first piece."""
    for piece in pieces:
        call = calls.setdefault(piece.index, ToolCall())
        call.id = call.id or piece.id or ""
        if piece.function is not None:
            call.name = call.name or piece.function.name or ""
            call.arguments += piece.function.arguments or ""


@dataclass
class Reply:
    parts: list[str] = field(default_factory=list)
    calls: dict[int, ToolCall] = field(default_factory=dict)

    def message(self, finished: bool) -> dict[str, Any]:
        """The assistant turn for the history; an interrupted call is not kept."""
        text = "".join(self.parts)
        if not (finished and self.calls):
            return {"role": "assistant", "content": text}
        calls = [self.calls[i].param() for i in sorted(self.calls)]
        return {"role": "assistant", "content": text or None, "tool_calls": calls}
