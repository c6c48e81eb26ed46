"""The Responses API's request (`POST /v1/responses`); its replies are openai-python's types.

What a server of open chat models can do is served (text and function calls); the hosted tools
(web and file search, computer use, code interpreter, MCP) and features such as reasoning or
background runs are 400s naming the field, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, model_validator
from pydantic_core import PydanticCustomError

from loragate.server.protocol import (
    FUNCTION_NAME,
    INT32_MAX,
    JsonInt,
    Probability,
    _Request,
)

HOSTED_TOOLS = (
    "web_search", "web_search_preview", "file_search", "computer_use_preview", "computer",
    "code_interpreter", "mcp", "image_generation", "local_shell", "shell", "apply_patch",
    "custom", "namespace", "tool_search",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class TextPart(_Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = None  # of an output_text sent back: nothing to keep


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class NamedFunctionChoice(_Strict):
    type: Literal["function"]
    name: str


class PlainFormat(_Strict):
    type: Literal["text", "json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    name: str = Field(default="response", max_length=64)
    schema_: Annotated[dict[str, Any], Field(min_length=1)] = Field(alias="schema")
    strict: StrictBool | None = None
    description: str | None = None


TextFormat = Annotated[PlainFormat | JsonSchemaFormat, Field(discriminator="type")]


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one an open model can promise


class ResponsesRequest(_Request):
    model: str | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[JsonInt, Field(ge=1, le=INT32_MAX)] | None = None
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    stream: StrictBool = False
    store: StrictBool = True  # OpenAI's default
    previous_response_id: str | None = None
    user: str | None = None
    truncation: Literal["disabled"] | None = None
    include: Annotated[list[Any], Field(max_length=0)] | None = None
    reasoning: None = Field(default=None, description="Not supported: these models do not reason.")
    # A strict false: the schema says so (`enum`), the validator below refuses true.
    background: Annotated[StrictBool, Field(json_schema_extra={"enum": [False]})] | None = Field(
        default=None, description="Not supported: false only."
    )

    @model_validator(mode="after")
    def _no_background(self) -> ResponsesRequest:
        if self.background:
            raise PydanticCustomError(
                "unsupported_field", "Background responses are not supported ('{param}')",
                {"param": "background"},
            )  # fmt: skip
        return self

    @model_validator(mode="before")
    @classmethod
    def _hosted_tools(cls, data: Any) -> Any:
        tools = data.get("tools") if isinstance(data, dict) else None
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind in HOSTED_TOOLS:
                raise PydanticCustomError(
                    "unsupported_tool",
                    "Hosted tools such as {kind} are not supported: only function tools "
                    "('{param}')",
                    {"param": f"tools.{i}.type", "kind": kind},
                )
        return data
