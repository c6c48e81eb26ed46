"""Anthropic's Messages API request (`POST /v1/messages`); replies are anthropic-sdk-python's types.

Served: text, custom tools with their calls and results, the sampling fields, structured output.
Images, documents, thinking, server tools (web search, code execution...), MCP servers and a
final assistant turn to continue are 400s naming the field, never silently dropped; so is a
field unknown to Anthropic's API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from loragate.server.protocol import (
    FUNCTION_NAME,
    INT32_MAX,
    MAX_STOP_STRINGS,
    JsonInt,
    Probability,
    StopString,
    _check_text,
)

SERVED_BLOCKS = ("text", "tool_use", "tool_result")
_NOT_SERVED = {
    "image": "Images are not supported: the models served here read text",
    "document": "Documents are not supported: send their text",
    "search_result": "Search results are not supported: send their text",
    "thinking": "Thinking is not supported: these models do not think",
    "redacted_thinking": "Thinking is not supported: these models do not think",
}
REFUSED_FIELDS = {
    "mcp_servers": "MCP servers are not supported",
    "container": "Containers (code execution) are not supported",
    "context_management": "Context management is not supported",
}


def _refusal(message: str, param: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_field", message + " ('{param}')", {"param": param})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Prompt-caching hints: vLLM caches prompt prefixes by itself. Accepted and ignored.
CacheControl = Annotated[dict[str, Any] | None, Field(description="Ignored.")]


class TextBlockParam(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl = None
    # Citations point into documents, which are not served.
    citations: Annotated[list[Any], Field(max_length=0)] | None = None


class ToolUseBlockParam(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str
    input: dict[str, Any]
    cache_control: CacheControl = None


class ToolResultBlockParam(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlockParam] = ""
    is_error: StrictBool = False
    cache_control: CacheControl = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(block.text for block in self.content)


ContentBlock = Annotated[
    TextBlockParam | ToolUseBlockParam | ToolResultBlockParam, Field(discriminator="type")
]


class MessageParam(_Strict):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(_Strict):
    """A custom tool: the only kind a model can call through its chat template."""

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    strict: StrictBool | None = None
    cache_control: CacheControl = None
    eager_input_streaming: StrictBool | None = Field(default=None, description="Ignored.")

    @field_validator("input_schema")
    @classmethod
    def _an_object(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":  # a call's `input` is an object
            raise ValueError("input_schema must have type 'object'")
        return schema


class ToolChoiceAuto(_Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceAny(_Strict):
    type: Literal["any"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceTool(_Strict):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceNone(_Strict):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class Metadata(_Strict):
    user_id: str | None = None


class ThinkingDisabled(_Strict):
    type: Literal["disabled"]


class JsonOutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema", min_length=1)


class OutputConfig(_Strict):
    format: JsonOutputFormat | None = None
    effort: None = Field(default=None, description="Not supported: these models do not think.")


class MessagesRequest(_Strict):
    model: str
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    max_tokens: Annotated[JsonInt, Field(ge=1, le=INT32_MAX)]
    system: str | list[TextBlockParam] | None = None
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)
    top_p: Probability | None = None
    top_k: Annotated[JsonInt, Field(ge=0, le=INT32_MAX)] | None = None
    stop_sequences: Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: StrictBool = False
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingDisabled | None = Field(default=None, description="Only disabled.")
    # Change nothing a server of open models makes (billing, routing, caching hints): accepted
    # and ignored.
    metadata: Metadata | None = Field(default=None, description="Ignored.")
    cache_control: CacheControl = None
    service_tier: Literal["auto", "standard_only"] | None = Field(
        default=None, description="Ignored."
    )
    speed: Literal["standard", "fast"] | None = Field(default=None, description="Ignored.")
    inference_geo: str | None = Field(default=None, description="Ignored.")
    diagnostics: dict[str, Any] | None = Field(default=None, description="Ignored.")
    user_profile_id: str | None = Field(default=None, description="Ignored.")
    workspace_id: str | None = Field(default=None, description="Ignored.")

    @model_validator(mode="before")
    @classmethod
    def _servable(cls, data: Any) -> Any:
        _check_text(data)
        if not isinstance(data, dict):
            return data
        for name, message in REFUSED_FIELDS.items():
            if data.get(name) is not None:
                raise _refusal(message, name)
        thinking = data.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") != "disabled":
            raise _refusal("Thinking is not supported: these models do not think", "thinking")
        _check_tools(data.get("tools"))
        _check_blocks(data.get("system"), "system", ("text",))
        messages = data.get("messages")
        for i, message in enumerate(messages if isinstance(messages, list) else []):
            if isinstance(message, dict):
                _check_turn(message, f"messages.{i}")
        return data

    @model_validator(mode="after")
    def _ends_with_the_user(self) -> MessagesRequest:
        if self.messages[-1].role == "assistant":
            where = f"messages.{len(self.messages) - 1}.role"
            raise _refusal("A final assistant turn to continue is not supported", where)
        return self

    def system_text(self) -> str | None:
        if isinstance(self.system, list):
            return "\n".join(block.text for block in self.system) or None
        return self.system or None


def _check_tools(tools: Any) -> None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise _refusal(
                f"Server tools such as {str(kind)[:64]} are not supported: only custom tools",
                f"tools.{i}.type",
            )


def _check_turn(message: dict[str, Any], where: str) -> None:
    # tool_use is the assistant's, tool_result the user's; a tool result holds text only.
    own = {"user": ("text", "tool_result"), "assistant": ("text", "tool_use"), "system": ("text",)}
    role = message.get("role")
    served = own.get(role, SERVED_BLOCKS) if isinstance(role, str) else SERVED_BLOCKS
    blocks = message.get("content")
    _check_blocks(blocks, f"{where}.content", served)
    for j, block in enumerate(blocks if isinstance(blocks, list) else []):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            _check_blocks(block.get("content"), f"{where}.content.{j}.content", ("text",))


def _check_blocks(blocks: Any, where: str, served: tuple[str, ...]) -> None:
    for i, block in enumerate(blocks if isinstance(blocks, list) else []):
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str) or kind in served:
            continue
        if kind in SERVED_BLOCKS:
            message = f"{kind} blocks are not allowed here, only {', '.join(served)}"
        else:
            message = _NOT_SERVED.get(kind, f"Content blocks of type {kind[:64]} are not supported")
        raise _refusal(message, f"{where}.{i}.type")
