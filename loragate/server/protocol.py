"""Request wire models. Responses are built from openai-python's own types."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)
from pydantic_core import PydanticCustomError


def _integral(value: Any) -> Any:
    # JSON Schema's integer includes 5.0; strict pydantic would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Booleans and numbers are strict (`0` is not false, `false` not 0): what the schema says.
# Counts and lengths beyond any sensible request; the engine stores them in 32-bit fields.
INT32_MAX = 2**31 - 1
MAX_STOP_STRINGS = 64
MAX_LOGIT_BIAS_ENTRIES = 1024

# Fields a client relies on, not served yet: a 400 naming them rather than a reply that
# silently lacks what was asked for. Empty values (`tools: []`, `tool_choice: "none"`) pass.
REFUSED_FIELDS = {
    "functions": "The deprecated functions are not supported: use tools",
    "function_call": "The deprecated function_call is not supported: use tool_choice",
    "audio": "Audio output is not supported",
    "web_search_options": "Web search is not supported",
    "use_beam_search": "Beam search is not supported",
    "prompt_logprobs": "prompt_logprobs is not supported; use /v1/completions with echo and "
    "logprobs for the prompt's logprobs",
    "reasoning_effort": "This model does not reason; reasoning_effort is not supported",
}
Nothing = Annotated[list[Any], Field(max_length=0)]


def _is_empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == "none"


def _check_text(value: Any) -> None:
    """Refuse lone surrogates anywhere in the body: they cannot be tokenized (an iterative walk:
    a body nests as deep as the JSON parser allows)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"text contains an invalid character at position {exc.start} "
                    "(a lone UTF-16 surrogate)"
                ) from exc
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class _Request(BaseModel):
    """A request body: no NaN or infinity, no lone surrogates, and no field that would be
    silently dropped: an unknown field is a 400 naming it, as OpenAI answers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # OpenAI's fields that change nothing a server of open models produces (billing, storage,
    # routing hints, predicted outputs that only save latency): accepted and ignored.
    metadata: dict[str, str] | None = Field(default=None, description="Ignored.")
    store: StrictBool | None = Field(default=None, description="Ignored: nothing is stored.")
    service_tier: str | None = Field(default=None, description="Ignored.")
    prediction: dict[str, Any] | None = Field(default=None, description="Ignored.")
    prompt_cache_key: str | None = Field(default=None, description="Ignored.")
    safety_identifier: str | None = Field(default=None, description="Ignored.")
    modalities: list[Literal["text"]] | None = Field(default=None, description="Text only.")
    # Not served (REFUSED_FIELDS): accepted only empty.
    functions: Nothing | None = Field(default=None, description="Not supported: use tools.")
    function_call: Literal["none"] | None = Field(default=None, description="Not supported.")
    audio: None = Field(default=None, description="Not supported.")
    web_search_options: None = Field(default=None, description="Not supported.")
    use_beam_search: Literal[False] | None = Field(default=None, description="Not supported.")
    prompt_logprobs: None = Field(default=None, description="Not supported.")
    reasoning_effort: None = Field(default=None, description="Not supported.")

    @model_validator(mode="before")
    @classmethod
    def _servable(cls, data: Any) -> Any:
        _check_text(data)
        if isinstance(data, dict):
            for name, message in REFUSED_FIELDS.items():
                if not _is_empty(data.get(name)):
                    raise PydanticCustomError(
                        "unsupported_field", message + " ('{param}')", {"param": name}
                    )
        return data


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


# OpenAI's rule for function names.
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(BaseModel):
    """A function tool: the only kind a model can call through a chat template."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    name: str
    arguments: str  # JSON, as OpenAI sends it


class AssistantToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    # Message fields OpenAI's SDK may send that change nothing here (`refusal`, `audio`) are
    # ignored.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None
    function_call: Any = None

    @model_validator(mode="after")
    def _tool_fields_in_their_roles(self) -> ChatMessage:
        if self.function_call:
            raise ValueError("function_call is deprecated and not supported: use tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def _refuse(message: str, param: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_tools", message + " ('{param}')", {"param": param})


def check_tools(tools: list[ToolDefinition], choice: ToolChoice | None) -> None:
    """Each function's parameters a valid JSON schema, names unique, the choice among them."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    names: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.function
        if function.name in names:
            raise _refuse(f"Two tools are named '{function.name}'", f"tools.{i}.function.name")
        names.add(function.name)
        if function.parameters is not None:
            try:
                validator_for(function.parameters).check_schema(function.parameters)
            except SchemaError as exc:
                where = f"tools.{i}.function.parameters"
                raise _refuse(f"Not a valid JSON schema: {exc.message}", where) from exc
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        listed = ", ".join(sorted(names)) or "(no tools given)"
        raise _refuse(
            f"tool_choice names '{choice.function.name}', which is not in tools ({listed})",
            "tool_choice",
        )
    if choice is not None and choice != "none" and not tools:
        raise _refuse("tool_choice needs tools", "tool_choice")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False  # vLLM's: usage so far on every chunk


class JsonSchemaSpec(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is json_schema")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` extra: exactly one constraint."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(default=None, min_length=1)
    grammar: str | None = None
    json_object: StrictBool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [k for k, v in self.model_dump(by_alias=True).items() if v not in (None, False)]
        if len(given) != 1:
            raise ValueError("structured_outputs takes exactly one of json, regex, choice, grammar")
        return self


Probability = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
Penalty = Annotated[StrictFloat, Field(ge=-2.0, le=2.0)]
Count = Annotated[JsonInt, Field(ge=0, le=INT32_MAX)]
StopString = Annotated[str, Field(max_length=4096)]
# A logit bias is added to the logit: OpenAI bounds it to [-100, 100] (-100 bans the token).
LogitBias = dict[
    Annotated[str, Field(pattern=r"^\d{1,10}$")], Annotated[StrictFloat, Field(ge=-100, le=100)]
]


class SamplingFields(_Request):
    """Fields shared by chat and text completions, OpenAI's and vLLM's extras."""

    model: str | None = None
    n: JsonInt = Field(default=1, ge=1, le=16)
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    seed: JsonInt | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[LogitBias, Field(max_length=MAX_LOGIT_BIAS_ENTRIES)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: JsonInt | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: Probability | None = None
    # Values above a few make no sense; a huge one turns logits infinite in the sampler.
    repetition_penalty: StrictFloat | None = Field(default=None, ge=0.01, le=100.0)
    ignore_eos: StrictBool = False
    min_tokens: Count = 0
    structured_outputs: StructuredOutputs | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> Self:
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError(
                "stream_options",
                "{param} is only allowed when stream is true",
                {"param": "stream_options"},
            )
        return self

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        options = self.stream_options
        return bool(options and options.include_usage and options.continuous_usage_stats)


MaxTokens = Annotated[JsonInt, Field(ge=1, le=INT32_MAX)]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: StrictBool = False
    top_logprobs: JsonInt | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _tools_consistent(self) -> ChatCompletionRequest:
        check_tools(self.tools or [], self.tool_choice)
        return self

    def effective_tool_choice(self) -> ToolChoice:
        """OpenAI's default: `auto` when tools are given, else `none`."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


TokenId = Annotated[JsonInt, Field(ge=0, le=INT32_MAX)]


class CompletionRequest(SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: MaxTokens | None = 16
    echo: StrictBool = False
    logprobs: JsonInt | None = Field(default=None, ge=0, le=20)
    suffix: Literal[""] | None = Field(default=None, description="Not supported: empty only.")

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            return []
        first = self.prompt[0]
        if isinstance(first, int):
            return [[int(t) for t in self.prompt]]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class LegacyTurn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class LegacyPromptRequest(BaseModel):
    """The tutorial's `POST /` body, with the optional fields loragate adds. Unknown fields
    are ignored, as the tutorial's server did."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        _check_text(data)
        return data

    prompt: str
    history: list[LegacyTurn] | list[tuple[str, str]] = Field(default_factory=list)
    system: str | None = None
    max_new_tokens: MaxTokens | None = None
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Probability | None = None
    model: str | None = None
    persona: str | None = None


class TokenizeRequest(_Request):
    """vLLM's /tokenize: a text, or a conversation rendered with the chosen persona's template."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    add_generation_prompt: StrictBool = True
    # vLLM's default: BOS for a text; none for a conversation, whose template writes its own.
    add_special_tokens: StrictBool | None = None
    return_token_strs: StrictBool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError(
                "tokenize_input", "Give exactly one of prompt or messages ('{param}')",
                {"param": "prompt"},
            )  # fmt: skip
        check_tools(self.tools or [], None)
        return self


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[TokenId]
